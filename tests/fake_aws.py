"""The AWS an EC2 instance sees, for the image test: IMDSv2 with a role, and a Lambda Invoke API.

Run by tests/test_image.py as a process in the container's network namespace before the
instance boots, as AWS's services exist before an instance does: FakeIMDS on the real
metadata address (so sssrd and botocore use their defaults) serving the private address and
the role credentials, and FakeLambda running the bundled demo renderer as the function, under
the same credentials. Prints one line, "ready", once both listen; stops on SIGTERM.

    python fake_aws.py --imds 169.254.169.254:80 --private-ip 10.0.1.23 \
        --lambda 127.0.0.1:9001 --region eu-west-1 --function render
"""

from __future__ import annotations

import argparse
import signal
import threading

from sssrd.testing import FakeIMDS, FakeLambda
from sssrd.testing.fake_lambda import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, parse_listen

ROLE = "sssrd-instance"
HANDLER = "sssrd.demo:handler"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--imds", type=parse_listen, required=True)
    parser.add_argument("--private-ip", required=True)
    parser.add_argument("--lambda", dest="invoke_api", type=parse_listen, required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--function", required=True)
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    imds_host, imds_port = args.imds
    lambda_host, lambda_port = args.invoke_api
    imds = FakeIMDS(
        args.private_ip,
        region=args.region,
        role_name=ROLE,
        access_key=DEFAULT_ACCESS_KEY,
        secret_key=DEFAULT_SECRET_KEY,
        host=imds_host,
        port=imds_port,
    )
    invoke_api = FakeLambda(
        functions={args.function: HANDLER}, region=args.region, host=lambda_host, port=lambda_port
    )
    with imds, invoke_api:
        print("ready", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
