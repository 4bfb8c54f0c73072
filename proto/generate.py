"""Regenerate the Python stubs in eve/v1/ from proto/eve/v1/*.proto.

    python proto/generate.py            # write eve/v1/
    python proto/generate.py --check    # exit 1 when the committed stubs are stale

The stubs are generated code: never edit them by hand.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "eve" / "v1"


def protos() -> list[Path]:
    return sorted((PROTO_DIR / "eve" / "v1").glob("*.proto"))


def generate(out_root: Path) -> Path:
    """Generate into out_root/eve/v1 and return that folder."""
    import grpc_tools
    from google.api import annotations_pb2
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    # google/api/annotations.proto and http.proto (the HTTP routes) ship with googleapis-common-protos.
    googleapis = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"-I{googleapis}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_DIR)) for p in protos()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out = out_root / "eve" / "v1"
    (out / "__init__.py").write_text('"""Generated from proto/eve/v1 by proto/generate.py. Do not edit."""\n')
    return out


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = {p.name for p in fresh.iterdir() if p.is_file()}
        names |= {p.name for p in OUT_DIR.glob("*.py*") if p.is_file()}
        return sorted(
            n for n in names
            if not (fresh / n).exists() or not (OUT_DIR / n).exists()
            or not filecmp.cmp(fresh / n, OUT_DIR / n, shallow=False)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when eve/v1 is stale")
    opts = parser.parse_args()
    if opts.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs: " + ", ".join(stale) + " (run python proto/generate.py)")
            return 1
        return 0
    generate(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
