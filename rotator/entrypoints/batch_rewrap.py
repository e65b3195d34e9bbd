"""S3 Batch Operations' rewrap function: each task one object, rewrapped by the CLI's own code.

The job (`aws s3control create-job ... --operation LambdaInvoke`, invocation schema 2.0) passes
the old key as `UserArguments: {"FromKey": KEY_ID}`; the manifest is `rotator rewrap --plan`'s
CSV (`bucket,key`, the key URL-encoded). Per task: Succeeded (rewrapped, or nothing of the key
left: a retried task), TemporaryFailure (the object changed since it was read, or AWS failed:
Batch retries it), PermanentFailure (not in a registered store, gone, a value that does not
decrypt). A result string carries counts, key IDs and error types, never a value.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import unquote_plus

from lambda_decrypt.logs import configure_logging
from rotator.config import Settings
from rotator.domain.stored_ciphertext import parse_store_uri
from rotator.entrypoints.bootstrap import Adapters, build_adapters
from rotator.errors import ConfigError, ConnectKeyRotatorError

LOG = logging.getLogger("rotator.batch_rewrap")
STORES_SETTING = "ROTATOR_CIPHERTEXT_STORES"
SUCCEEDED, TEMPORARY, PERMANENT = "Succeeded", "TemporaryFailure", "PermanentFailure"
OUTCOME_CODES = {
    "rewrapped": SUCCEEDED,
    "nothing to do": SUCCEEDED,
    "changed": TEMPORARY,
    "missing": PERMANENT,
    "failed": PERMANENT,
}
# A warm container keeps its clients, its stores and each key's Rewrapper (keys loaded once).
_adapters_cache: list[Adapters] = []
_rewrappers: dict[str, Any] = {}
_stores: dict[str, Any] = {}


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Raises ConfigError for an event that is not an S3 Batch Operations invocation of schema
    2.0 (the only one that carries UserArguments): a function error, which Batch reports."""
    tasks, from_key = _invocation(event)
    settings = Settings.load()
    configure_logging(settings.log_level)
    results = []
    for task in tasks:
        if isinstance(task, dict):
            code, text = _task(settings, from_key, task)
            task_id = task.get("taskId")
        else:
            code, text, task_id = PERMANENT, "a task that is not a JSON object", None
        results.append({"taskId": task_id, "resultCode": code, "resultString": text})
    LOG.info(
        json.dumps(
            {
                "event": "batch_rewrap",
                "from_key": from_key,
                "tasks": len(results),
                "results": {
                    code: sum(r["resultCode"] == code for r in results)
                    for code in (SUCCEEDED, TEMPORARY, PERMANENT)
                },
            }
        )
    )
    return {
        "invocationSchemaVersion": event.get("invocationSchemaVersion", "2.0"),
        "treatMissingKeysAs": PERMANENT,
        "invocationId": event.get("invocationId"),
        "results": results,
    }


def _invocation(event: Any) -> tuple[list[Any], str]:
    """The tasks and the old key of an S3 Batch Operations invocation (schema 2.0)."""
    if not isinstance(event, dict) or event.get("invocationSchemaVersion") != "2.0":
        raise ConfigError(
            "event", "not an S3 Batch Operations invocation of schema 2.0 (LambdaInvoke)"
        )
    tasks = event.get("tasks")
    job = event.get("job")
    arguments = job.get("userArguments") if isinstance(job, dict) else None
    if not isinstance(tasks, list) or not isinstance(arguments, dict | None):
        raise ConfigError("event", "an invocation of schema 2.0 has a list of tasks and a job")
    return tasks, str((arguments or {}).get("FromKey") or "")


def _task(settings: Settings, from_key: str, task: dict[str, Any]) -> tuple[str, str]:
    from rotator.services.rewrap import Rewrapper, rewrap_one

    if not from_key:
        return PERMANENT, 'the job names no old key: UserArguments {"FromKey": KEY_ID}'
    bucket = task.get("s3BucketName") or str(task.get("s3BucketArn", "")).rpartition(":")[2]
    key = unquote_plus(str(task.get("s3Key", "")))
    store_uri = _registered_store(settings, bucket, key)
    if store_uri is None:
        return PERMANENT, f"s3://{bucket}/{key} is in no registered store ({STORES_SETTING})"
    try:
        adapters = _adapters(settings)
        if from_key not in _rewrappers:
            _rewrappers[from_key] = Rewrapper(adapters.keyring, from_key)
        if store_uri not in _stores:
            (_stores[store_uri],) = adapters.ciphertext_stores([store_uri])
        outcome, text = rewrap_one(_rewrappers[from_key], _stores[store_uri], key)
    except ConnectKeyRotatorError as error:  # refused (current key), versioning off: for good
        return PERMANENT, str(error)
    except Exception as error:  # noqa: BLE001 - AWS failed (throttled, timed out): Batch retries
        return TEMPORARY, f"{type(error).__name__} reading or writing s3://{bucket}/{key}"
    return OUTCOME_CODES[outcome.value], text


def _registered_store(settings: Settings, bucket: str, key: str) -> str | None:
    """The registered S3 store that holds the object, if any."""
    for uri in settings.stores:
        scheme, name, prefix = parse_store_uri(uri)
        if scheme == "s3" and name == bucket and key.startswith(prefix):
            return uri
    return None


def _adapters(settings: Settings) -> Adapters:
    if not _adapters_cache:
        _adapters_cache.append(build_adapters(settings))
    return _adapters_cache[0]


def reset_container() -> None:
    """Forget the warm container's clients, stores and keys (tests: a new container)."""
    _adapters_cache.clear()
    _rewrappers.clear()
    _stores.clear()
