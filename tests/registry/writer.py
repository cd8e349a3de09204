"""Registry writers in their own processes, for the tests that kill or race them.

    python -m tests.registry.writer write MODEL_DIR CACHE SOURCE_DIR VERSION NEW_VERSION (sleep | big)
        copy VERSION of the folder registry SOURCE_DIR into MODEL_DIR as NEW_VERSION; `extra` then
        either prints "in extra" and sleeps (killed between uploads) or adds a 40 MB file whose
        multipart upload takes 2 s a part (killed during it)
    python -m tests.registry.writer promote MODEL_DIR CACHE VERSION EXPECTED START_AT
        at time.time() == START_AT, set `current` to VERSION if it still names EXPECTED; prints
        "won" or "lost: <the RegistryError>"
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from registry import open_registry
from registry.store import Registry, RegistryError


def main(argv: list[str]) -> int:
    command, model_dir, cache = argv[0], argv[1], argv[2]
    registry = open_registry(model_dir, cache)
    if command == "write":
        source, version, new, mode = argv[3:7]
        model, meta = Registry(source).load(version)

        def extra(folder: Path) -> None:
            if mode == "sleep":
                print("in extra", flush=True)
                time.sleep(60)
            else:
                with (folder / "big.bin").open("wb") as f:
                    for _ in range(40):
                        f.write(os.urandom(1 << 20))
                print("uploading big.bin", flush=True)

        if mode == "big":  # each part of the multipart upload takes 2 s: the test kills it midway, surely
            registry._data.meta.events.register("before-send.s3.UploadPart", lambda **_: time.sleep(2))
        registry.write(model, meta.model_copy(update={"version": new}), extra)
        print("written", flush=True)
        return 0
    version, expected, start_at = argv[3], argv[4], float(argv[5])
    registry.current()  # connect before the start line, like a trainer that has run its gate
    time.sleep(max(0.0, start_at - time.time()))
    try:
        registry.set_current(version, "promote", f"race {os.getpid()}", expected=expected)
    except RegistryError as exc:
        print(f"lost: {exc}", flush=True)
        return 1
    print("won", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
