"""Opens one image with Volatility 3 and reports, as JSON on stdout, which
layers it stacked and which Linux banners banners.Banners found.

Run with the Python of the harness's Volatility venv (env.venv_python()):
    python3 volcheck.py IMAGE
Uses Volatility's own API the way its `vol` front end does, so the layer
stack is the one a user of `vol -f IMAGE banners.Banners` gets.
"""

import json
import sys
from pathlib import Path

import volatility3.plugins
from volatility3 import framework
from volatility3.framework import automagic, contexts, interfaces, plugins
from volatility3.framework.automagic import stacker
from volatility3.plugins import banners


def main(image):
    framework.require_interface_version(2, 0, 0)
    framework.import_files(volatility3.plugins, True)
    ctx = contexts.Context()
    ctx.config["automagic.LayerStacker.single_location"] = Path(image).resolve().as_uri()
    ctx.config["automagic.LayerStacker.stackers"] = stacker.choose_os_stackers(banners.Banners)
    magics = automagic.choose_automagic(automagic.available(ctx), banners.Banners)
    plugin = plugins.construct_plugin(ctx, magics, banners.Banners, "plugins", None, None)
    rows = []

    def visit(node, accumulator):
        accumulator.append([str(v) for v in node.values])
        return accumulator

    plugin.run().populate(visit, rows)
    layers = {name: type(layer).__name__ for name, layer in ctx.layers.items()}
    print(json.dumps({
        "layers": layers,
        "primary": ctx.config.get("plugins.Banners.primary"),
        "banners": [row[-1] for row in rows],
    }))


if __name__ == "__main__":
    main(sys.argv[1])
