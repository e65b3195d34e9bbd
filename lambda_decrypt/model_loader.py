"""botocore's data loader without its scan of every service: the SSM client's models, sooner."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from botocore.exceptions import DataNotFoundError
from botocore.loaders import Loader, create_loader, instance_cache


class ServiceModelLoader(Loader):
    """A botocore Loader that finds a service's model without listing all services first.

    botocore's `load_service_model` checks that the service exists by listing every service it
    ships (~450 directories, each listed and its versions stat'ed), once per model type; a new
    SSM client loads two types (its API and its endpoint rules), so a cold start spent ~20 ms
    of CPU on those scans for one name. Listing the API versions of that one service answers
    the same question from the same search paths: a service is in botocore's list exactly when
    one of its version directories holds the type's file. A name not found there takes
    botocore's own path, so it fails as it always did (UnknownServiceError, with the list).
    Search paths, extras and the cache are botocore's.
    """

    @instance_cache
    def load_service_model(
        self, service_name: str, type_name: str, api_version: str | None = None
    ) -> Any:
        # The rest of botocore's load_service_model merges the model's extras with two private
        # helpers: a botocore release without them takes botocore's own path (slower, never
        # wrong) rather than failing a cold start on a caller's line.
        find_extras = getattr(self, "_find_extras", None)
        processor = getattr(self, "_extras_processor", None)
        if find_extras is None or processor is None:
            return super().load_service_model(service_name, type_name, api_version)
        try:
            latest = self.determine_latest_version(service_name, type_name)
        except DataNotFoundError:
            return super().load_service_model(service_name, type_name, api_version)
        version = latest if api_version is None else api_version
        model = self.load_data(str(PurePath(service_name, version, type_name)))
        # tests/test_lambda_imports.py compares the result with botocore's own loader.
        processor.process(model, find_extras(service_name, type_name, version))
        return model


def service_model_loader(data_path: str | None) -> ServiceModelLoader:
    """The loader a botocore session builds for itself (`create_loader`: botocore's data, and
    AWS_DATA_PATH's directories before it), as a ServiceModelLoader."""
    search_paths = list(create_loader(data_path).search_paths)
    return ServiceModelLoader(extra_search_paths=search_paths, include_default_search_paths=False)
