"""Push an exported snapshot to the Hugging Face Hub in one commit (huggingface_hub). The endpoint comes from
HF_ENDPOINT, the token from HF_TOKEN or the huggingface_hub login; the token is never printed."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from store import SkdError, Store

from .export import export_snapshot
from .snapshot import snapshot_row

RETRIES = 3


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise SkdError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    return token


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise SkdError(f"bad repo id {repo_id!r}: expected NAMESPACE/NAME with letters, digits, '-', '_', '.'") \
            from None


def network_error(e: Exception) -> bool:
    """Refused, DNS, timeouts: worth a retry. huggingface_hub talks through httpx (or its fork httpx2)."""
    return isinstance(e, OSError) or any(c.__name__ == "TransportError" and c.__module__.startswith("httpx")
                                         for c in type(e).__mro__)


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def push_snapshot(store: Store, name: str, repo_id: str, private: bool = False, revision: str | None = None,
                  retries: int = RETRIES) -> dict[str, Any]:
    """Create the dataset repo (if needed) and upload the exported snapshot as one commit."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    row = snapshot_row(store, name)
    _check_repo_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        raise SkdError("HF_HUB_OFFLINE is set: unset it to push")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=_token())
    message = f"skd snapshot {name} ({row['content_hash'][:12]})"
    with tempfile.TemporaryDirectory(prefix="skd-push-") as tmp:
        folder = Path(tmp) / name
        export_snapshot(store, name, folder, "hf")
        for attempt in range(1, retries + 1):
            try:
                return _upload(api, folder, repo_id, private, revision, message, row) | {"snapshot": name}
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else None
                if (status is not None and status < 500 and status != 429) or attempt == retries:
                    raise SkdError(f"push to {repo_id} failed: {_one_line(e)}") from None
            except Exception as e:
                if not network_error(e):
                    raise
                if attempt == retries:
                    raise SkdError(f"push to {repo_id} failed after {retries} tries: {_one_line(e)}") from None
            time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def _upload(api, folder: Path, repo_id: str, private: bool, revision: str | None, message: str,
            row: dict[str, Any]) -> dict[str, Any]:
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    # create_repo leaves an existing repo as it is: --private must not publish into a public one
    if private and not api.dataset_info(repo_id).private:
        raise SkdError(f"{repo_id} exists and is public; --private would publish the snapshot: make the repo "
                       "private first, or push without --private")
    if revision:
        api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
    # data/* of an earlier push goes (a split this snapshot lacks would stay beside its card)
    info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder, revision=revision,
                             commit_message=message, commit_description=f"snapshot hash {row['content_hash']}",
                             delete_patterns=["data/*"])
    return {"repo_id": repo_id, "revision": revision or "main", "commit": info.oid, "url": info.commit_url,
            "message": message}
