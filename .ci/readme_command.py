"""Print the README's Nth command (1 or 2): the indented code lines of its opening section,
before the first heading, in order.  .ci/run runs them as the README writes them."""

import sys

n = int(sys.argv[2])
commands = []
for line in open(sys.argv[1], encoding="utf-8"):
    if line.startswith("## "):
        break
    if line.startswith("    ") and line.strip():
        commands.append(line.strip())
if len(commands) < n:
    sys.exit(f"readme_command: the README's opening section has {len(commands)} commands, not {n}")
print(commands[n - 1])
