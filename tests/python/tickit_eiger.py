"""Runs tickit-devices' EIGER simulator (REST API and Stream V2 CBOR on the ports of the YAML
file given): `python tickit_eiger.py CONFIG.yaml`.

apischema 0.19 (tickit's) fails to import beside graphql-core 3.3 (which the Tiled client
brings into the same venv); it only needs graphql for schema generation, which the
simulator never uses, so graphql is hidden from it here."""

import sys

sys.modules["graphql"] = None
import tickit_devices.eiger  # noqa: E402,F401  (registers the Eiger component)
from tickit.cli import main  # noqa: E402

sys.argv = ["tickit", "all", sys.argv[1]]
main()
