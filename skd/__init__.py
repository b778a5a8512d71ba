"""skd: the command line and the pipeline that compose the stages."""
