"""The Cloud Storage emulator the ``gs://`` tests talk to: gcp-storage-emulator, in memory, on 127.0.0.1.

Two additions: its media downloads do not send ``x-goog-generation``, the header real Cloud Storage sends and
TensorStore (Orbax's storage layer) reads to version what it cached (without it every read of a checkpoint's
OCDBT manifest fails with "Malformed StorageGeneration"), so the wrapper adds it from the object's record; and
its in-memory store is not safe under TensorStore's concurrent requests, so requests are served one at a time.

    python tests/gcs_emulator.py PORT
"""

from __future__ import annotations

import sys
import threading

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects


_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 - the emulator's own handler answers 404
        obj = None
    if obj is not None:
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    return _download(request, response, storage, *args, **kwargs)


_ONE_AT_A_TIME = threading.Lock()


def _serialised(route):
    def handle(self, method):
        with _ONE_AT_A_TIME:
            return route(self, method)

    return handle


def main(port: int) -> None:
    objects.download = _download_with_generation  # ``objects.get`` with alt=media calls it by this name
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is _download:
                handlers[method] = _download_with_generation
    server.Router.handle = _serialised(server.Router.handle)
    emulator = server.create_server("127.0.0.1", port, in_memory=True)
    emulator.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
