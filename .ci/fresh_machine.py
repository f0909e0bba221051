"""Make a fresh Debian 12 machine as a Docker image, the way selfhost makes stacks.

debootstrap of bookworm (minbase) with only python3, python3-venv, python3-pip, git and
ca-certificates, from the mirror in this machine's apt sources, then ``docker import``.
Prints the image's name. Usage: python .ci/fresh_machine.py STACKS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from selfhost.config import Settings
from selfhost.mirror import debian_mirror
from selfhost.stages.docker_engine import DockerEngine
from selfhost.stages.security import Security
from selfhost.stages.stack import StackSpec, StackStore

PACKAGES = ("python3", "python3-venv", "python3-pip", "git", "ca-certificates")


def main() -> int:
    store = StackStore(Path(sys.argv[1]), lambda: debian_mirror(None))
    stack = store.ensure(
        StackSpec.make("bookworm", "minbase", PACKAGES),
        log=lambda line: print(line, file=sys.stderr),
    )
    # only the image is made here: no sandbox runs, so no seccomp filter is needed
    DockerEngine(Security(ids=Settings().sandbox_ids, seccomp=None)).prepare(stack)
    print(stack.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
