"""The shard function as ``docs/cluster.md`` writes it in C and JavaScript gives the router's shards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from router.core.shards import shard_of

DOC = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"
TOPICS = ["", "a", "foobar", "/video/main", "/sensors/é/ü", "/x/" + "y" * 200, "/a.b-c_d~e"]
SHARDS = [1, 7, 64, 1024, 2**32 - 1]


def snippet(language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert found is not None, f"no {language} block in {DOC}"
    return found.group(1)


def expected() -> list[str]:
    return [str(shard_of(topic.encode(), shards)) for topic in TOPICS for shards in SHARDS]


def test_the_c_snippet(tmp_path: Path) -> None:
    source = tmp_path / "shard.c"
    source.write_text(
        "#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n"
        + snippet("c")
        + "int main(int argc, char **argv) {\n"
        "    for (int i = 1; i + 1 < argc; i += 2)\n"
        '        printf("%u\\n", shard_of(argv[i], (uint32_t)strtoul(argv[i + 1], NULL, 10)));\n'
        "    return 0;\n}\n",
        encoding="utf-8",
    )
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "no C compiler: run SWITCHBOARD_TEST_DEPS=1 scripts/setup"
    subprocess.run([compiler, "-std=c99", "-o", str(tmp_path / "shard"), str(source)], check=True)
    args = [str(part) for topic in TOPICS for shards in SHARDS for part in (topic, shards)]
    done = subprocess.run([str(tmp_path / "shard"), *args], capture_output=True, text=True, check=True)
    assert done.stdout.split() == expected()


def test_the_javascript_snippet() -> None:
    node = shutil.which("node")
    assert node is not None, "no Node.js: run SWITCHBOARD_TEST_DEPS=1 scripts/setup"
    program = snippet("javascript") + (
        "const [topics, shards] = JSON.parse(process.argv[1]);\n"
        "for (const t of topics) for (const s of shards) console.log(shardOf(t, s));\n"
    )
    done = subprocess.run(
        [node, "-e", program, json.dumps([TOPICS, SHARDS])], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == expected()
