#!/bin/sh
echo "bazel coverage needs the downloaded coverage tools; use make test" >&2
exit 1
