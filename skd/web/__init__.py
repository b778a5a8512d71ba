"""The web app (`skd serve`) and the HTML report (`skd report`)."""
