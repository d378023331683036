"""Run one fake metadata server in the foreground (for a VM network namespace):

    python -m tests.fakes.metadata_main --cloud gce --pki DIR --listen 169.254.169.254:80

Prints ``ready`` once listening; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from aiohttp import web

from tests.fakes.azure_metadata import FakeAzure
from tests.fakes.cloud_pki import CloudPki
from tests.fakes.ec2_metadata import FakeEc2
from tests.fakes.gce_metadata import FakeGce


def build_app(cloud: str, pki: CloudPki, *, drop_put: bool = False,
              instance_id: str | None = None, private_ip: str | None = None) -> web.Application:
    if cloud == "gce":
        return FakeGce(pki, **({"instance_id": instance_id} if instance_id else {})).app()
    if cloud == "aws":
        # Like EC2, the document names the instance's own private address.
        options = {"instance_id": instance_id, "private_ip": private_ip}
        doc = pki.aws_document(**{k: v for k, v in options.items() if v}) if any(
            options.values()) else None
        return FakeEc2(pki, document=doc, drop_put_replies=drop_put).app()
    if cloud == "azure":
        return FakeAzure(pki, **({"vm_id": instance_id} if instance_id else {})).app()
    raise SystemExit(f"unknown cloud {cloud!r}")


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    runner = web.AppRunner(build_app(args.cloud, CloudPki.load(Path(args.pki)),
                                     drop_put=args.drop_put, instance_id=args.instance_id,
                                     private_ip=args.private_ip),
                           access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, int(port)).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cloud", required=True, choices=("gce", "aws", "azure"))
    parser.add_argument("--pki", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--drop-put", action="store_true")
    parser.add_argument("--instance-id")
    parser.add_argument("--private-ip")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
