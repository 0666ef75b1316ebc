"""The flat code bundle: what it may import, that transformers fetches all of it, and how imports are rewritten."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

import seqzoo
from seqzoo.hub import BundleError, build_bundle
from seqzoo.kernels.registry import Backend
from seqzoo.layers.mixer import Mixer
from tests.hub.conftest import ARCHITECTURES

ALLOWED = {"torch", "transformers", "__future__"} | set(sys.stdlib_module_names)
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception"}


def guarded(ancestors: list[ast.AST]) -> bool:
    """Inside the body of a `try` whose handlers catch a failed import."""
    for parent, child in zip(ancestors, ancestors[1:]):
        if isinstance(parent, ast.Try) and child in parent.body:
            caught = set()
            for handler in parent.handlers:
                types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                caught |= {getattr(t, "id", None) for t in types}
            if caught & IMPORT_ERRORS:
                return True
    return False


def import_problems(path: Path, bundle_files: set[str]) -> list[str]:
    """Every import in the file must be torch, transformers, the standard library, a guarded optional import, or a
    flat sibling import of a file in the bundle."""
    problems = []

    def visit(node: ast.AST, ancestors: list[ast.AST]) -> None:
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.level:
            siblings = [node.module] if node.module else [alias.name for alias in node.names]
            if node.level != 1 or any(f"{name}.py" not in bundle_files for name in siblings):
                problems.append(f"{where}: relative import of {'.' * node.level}{node.module or ''} "
                                f"{[a.name for a in node.names]} is not a flat sibling in the bundle")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            for name in names:
                if name.split(".")[0] not in ALLOWED and not guarded(ancestors + [node]):
                    problems.append(f"{where}: unguarded import of {name}")
        for child in ast.iter_child_nodes(node):
            visit(child, ancestors + [node])

    visit(ast.parse(path.read_text()), [])
    return problems


def code_files(folder: Path) -> set[str]:
    return {path.name for path in folder.glob("*.py")}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bundle_imports_only_torch_transformers_stdlib_and_guarded_extras(arch, exports):
    folder = exports[arch]
    files = code_files(folder)
    for name in sorted(files):
        assert import_problems(folder / name, files) == []
        # transformers' own check (it refuses to load a file whose unguarded imports are not installed)
        assert set(get_imports(folder / name)) <= ALLOWED, name
        assert "seqzoo." not in "".join(line for line in (folder / name).read_text().splitlines()
                                        if line.lstrip().startswith(("import ", "from ")))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_transformers_fetches_exactly_the_bundle(arch, exports):
    """transformers copies (or downloads) the files an entry module names in `from .x import`, recursively: from
    the auto_map entry modules that must reach every bundled file, and every class auto_map names must exist."""
    folder = exports[arch]
    spec = seqzoo.get_architecture(arch)
    auto_map = build_bundle(spec).auto_map
    assert auto_map == {
        "AutoConfig": f"configuration_{spec.model_type}.{spec.config_class.__name__}",
        "AutoModel": f"modeling_{spec.model_type}.{spec.model_class.__name__}",
        **{seqzoo.registry.TASKS[task][0]: f"modeling_{spec.model_type}.{head.__name__}"
           for task, head in spec.heads.items()},
    }
    entries = {target.split(".")[0] + ".py" for target in auto_map.values()}
    reached = set(entries)
    for entry in entries:
        reached |= {Path(path).name for path in get_relative_import_files(folder / entry)}
    assert reached == code_files(folder)
    for target in auto_map.values():
        module, name = target.split(".")
        tree = ast.parse((folder / f"{module}.py").read_text())
        assert name in {node.name for node in tree.body if isinstance(node, ast.ClassDef)}, target


def test_bundle_rewrites_every_way_of_importing(toy_plugin):
    """Module objects, `import ... as`, sibling modules of a plugin package and lazy imports inside functions all
    become flat sibling imports; the plugin's own package is bundled with seqzoo's modules."""
    bundle = build_bundle(toy_plugin)
    assert bundle.origins["modeling_toyzoo_lstm"] == "toyzoo.modeling_toy"
    assert bundle.origins["configuration_toyzoo_lstm"] == "toyzoo.configuration_toy"
    assert bundle.origins["toyzoo_helpers"] == "toyzoo.helpers"
    assert bundle.origins["seqzoo_models_lstm_modeling_lstm"] == "seqzoo.models.lstm.modeling_lstm"
    modeling = bundle.files["modeling_toyzoo_lstm"]
    for line in [
        "from .seqzoo_models_modeling_utils import __name__ as _bundled_seqzoo_models_modeling_utils",
        "from . import seqzoo_models_modeling_utils as modeling_utils",
        "from . import seqzoo_models_lstm_modeling_lstm as modeling_lstm",
        "from . import toyzoo_helpers as helpers",
        "from .configuration_toyzoo_lstm import ToyConfig",
        "        from .toyzoo_helpers import logit_scale",  # still inside forward(), same indentation
    ]:
        assert f"\n{line}\n" in modeling, line
    # seqzoo's own `from .configuration_lstm import LSTMConfig` follows the flat name of that module
    assert "from .seqzoo_models_lstm_configuration_lstm import LSTMConfig" in (
        bundle.files["seqzoo_models_lstm_modeling_lstm"])
    assert modeling.startswith("# toyzoo/modeling_toy.py from seqzoo ")


def test_bundle_refuses_an_import_that_binds_the_package_name(tmp_path, monkeypatch):
    (tmp_path / "badzoo").mkdir()
    (tmp_path / "badzoo" / "__init__.py").write_text("")
    (tmp_path / "badzoo" / "modeling_bad.py").write_text(
        "import seqzoo.cache\n\n\nclass BadConfig:\n    model_type = 'badzoo'\n\n\nclass BadModel:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from badzoo import modeling_bad

    spec = SimpleNamespace(model_type="badzoo", config_class=modeling_bad.BadConfig,
                           model_class=modeling_bad.BadModel, heads={"causal-lm": modeling_bad.BadModel})
    with pytest.raises(BundleError, match=r"modeling_bad\.py:1: `import seqzoo\.cache` binds the package name "
                                          r"'seqzoo'.*use `from seqzoo import cache` instead"):
        build_bundle(spec)
    for name in [name for name in sys.modules if name.startswith("badzoo")]:
        del sys.modules[name]


def test_lazy_backend_whose_module_is_missing_is_unavailable():
    """The kernel registry's rule that keeps lazy (Triton) backends out of the bundle's way."""
    assert Backend("op", "present", "math:sqrt").available()
    assert not Backend("op", "missing", "seqzoo.kernels.no_such_module:kernel").available()
    assert not Backend("op", "not-installed", "no_such_package.kernels:kernel").available()
    assert Backend("op", "callable", len).available()


# The kernel op packages each architecture's layers use; a bundle carries those and no others.
OPS_BY_ARCHITECTURE = {
    "rnn": {"rnn_cells"}, "lstm": {"rnn_cells"}, "gru": {"rnn_cells"}, "transformer": set(), "rwkv7": {"wkv7"},
    "mamba": {"causal_conv1d", "selective_scan"}, "mamba2": {"causal_conv1d", "ssd"},
    "hybrid": {"rnn_cells", "wkv7", "causal_conv1d", "selective_scan", "ssd"},  # any mixer, per layer
}


@pytest.mark.parametrize("arch", sorted(OPS_BY_ARCHITECTURE))
def test_a_bundle_holds_only_the_kernels_its_architecture_uses(arch, exports):
    ops = {name[len("seqzoo_kernels_"):].split("_reference")[0].split("_chunked")[0].split("_fused")[0]
           .split("_triton")[0] for name in code_files(exports[arch]) if name.startswith("seqzoo_kernels_")}
    # shared by every op, the decode step's large products (every causal LM's head), compile_decoding()'s pass and
    # the choice of who multiplies
    ops -= {"registry.py", "backend.py", "triton_support.py", "reset.py", "symbolic.py", "onednn_linear.py",
            "one_row_products.py", "product_choice.py"}
    assert {op.removesuffix(".py") for op in ops} == OPS_BY_ARCHITECTURE[arch]


# Run where seqzoo is installed but broken (an older release refusing this transformers, say): the bundle is what
# trust_remote_code loads, and it must not import the installed seqzoo (which would also register seqzoo's classes
# with transformers, so that later trust_remote_code loads in the process silently got those instead).
_BROKEN_SEQZOO = """
import importlib.abc, sys
tried = []
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "seqzoo":
            tried.append(name)
            raise ImportError("this seqzoo cannot be imported here")
sys.meta_path.insert(0, Broken())
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
model(input_ids=torch.tensor([[1, 2, 3]]))
print("imports of seqzoo:", tried)
"""


@pytest.mark.parametrize("arch", ["lstm", "hybrid"])
def test_a_bundle_never_imports_an_installed_seqzoo(arch, tmp_path):
    import os
    import subprocess

    from tests.hub.conftest import tiny_byte_model

    tiny_byte_model(arch).save_pretrained(tmp_path / "model")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", _BROKEN_SEQZOO, str(tmp_path / "model")], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "imports of seqzoo: []" in run.stdout


def plugin_spec(tmp_path, monkeypatch, package: str, files: dict[str, str], model_type: str | None = None):
    """A plugin package written into ``tmp_path`` and importable for this test: its ``modeling`` module defines
    ``Config`` and ``Model``; returns a spec of them as build_bundle reads one."""
    for name, text in files.items():
        (tmp_path / package / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / package / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name == package or name.startswith(f"{package}.")]:
        monkeypatch.delitem(sys.modules, name)
    import importlib

    modeling = importlib.import_module(f"{package}.modeling")
    return SimpleNamespace(model_type=model_type or package, config_class=modeling.Config,
                           model_class=modeling.Model, heads={"causal-lm": modeling.Model})


CLASSES = "\n\nclass Config:\n    pass\n\n\nclass Model:\n    pass\n"


@pytest.fixture
def forget_plugins():
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if not name.startswith(("seqzoo", "transformers", "torch")):
            del sys.modules[name]


def test_a_one_line_guarded_import_stays_valid_python(tmp_path, monkeypatch, forget_plugins):
    """An import sharing its line with `try:` is rewritten on that line: two statements on two lines would each
    need their own `try:`."""
    spec = plugin_spec(tmp_path, monkeypatch, "linezoo", {
        "__init__.py": "",
        "modeling.py": "try: from seqzoo import cache\nexcept ImportError: cache = None\n" + CLASSES,
    })
    text = build_bundle(spec).files["modeling_linezoo"]
    ast.parse(text)
    assert ("\ntry: from .seqzoo_cache import __name__ as _bundled_seqzoo_cache; from . import seqzoo_cache as cache\n"
            in text)


def test_a_model_type_that_is_no_python_name_gets_importable_file_names(tmp_path, monkeypatch, forget_plugins):
    """transformers' own model types hold hyphens (xlm-roberta); a file name with one cannot be imported from."""
    spec = plugin_spec(tmp_path, monkeypatch, "dashzoo", {
        "__init__.py": "",
        "configuration.py": "class Config:\n    pass\n",
        "modeling.py": "from dashzoo.configuration import Config\n\n\nclass Model:\n    pass\n",
    }, model_type="dash-zoo")
    bundle = build_bundle(spec)
    assert bundle.auto_map == {"AutoConfig": "configuration_dash_zoo.Config", "AutoModel": "modeling_dash_zoo.Model",
                               "AutoModelForCausalLM": "modeling_dash_zoo.Model"}
    assert all(name.isidentifier() for name in bundle.files)
    assert "\nfrom .configuration_dash_zoo import Config\n" in bundle.files["modeling_dash_zoo"]


def test_two_modules_with_one_flat_name_are_refused(tmp_path, monkeypatch, forget_plugins):
    spec = plugin_spec(tmp_path, monkeypatch, "clashzoo", {
        "__init__.py": "", "a_b.py": "X = 1\n", "a/__init__.py": "", "a/b.py": "Y = 2\n",
        "modeling.py": "from clashzoo.a_b import X\nfrom clashzoo.a.b import Y\n" + CLASSES,
    })
    with pytest.raises(BundleError, match=r"modules 'clashzoo\.a(_b|\.b)' and 'clashzoo\.a(_b|\.b)' would both be "
                                          r"bundled as clashzoo_a_b\.py; rename one of them"):
        build_bundle(spec)


def test_a_module_without_python_source_is_refused(tmp_path, monkeypatch, forget_plugins):
    """A compiled extension module of the plugin cannot be copied into the bundle as source."""
    import importlib.machinery

    (tmp_path / "extzoo").mkdir()
    (tmp_path / "extzoo" / f"fast{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    spec = plugin_spec(tmp_path, monkeypatch, "extzoo", {
        "__init__.py": "", "modeling.py": "def kernel():\n    from extzoo.fast import run\n" + CLASSES,
    })
    with pytest.raises(BundleError, match=r"cannot bundle module 'extzoo\.fast': it has no Python source file"):
        build_bundle(spec)


@pytest.mark.parametrize("statement, module", [
    ("from misszoo.gone import run", "misszoo.gone': the code imports it, but there is no such module"),
    ("from misszoo.gone.deeper import run", r"misszoo.gone.deeper': No module named 'misszoo.gone'"),
    ("import misszoo.gone.deeper as deeper", r"misszoo.gone.deeper': No module named 'misszoo.gone'"),
], ids=["module", "parent-package", "import-as"])
def test_an_import_of_a_missing_module_is_named(tmp_path, monkeypatch, forget_plugins, statement, module):
    """Inside a function, as an optional extra is imported: the plugin itself imports, and its bundle fails only when
    built."""
    spec = plugin_spec(tmp_path, monkeypatch, "misszoo", {
        "__init__.py": "", "modeling.py": f"def kernel():\n    {statement}\n" + CLASSES,
    })
    with pytest.raises(BundleError, match=rf"cannot bundle module '{module}"):
        build_bundle(spec)


def test_a_relative_import_above_the_top_level_package_is_named(tmp_path, monkeypatch, forget_plugins):
    spec = plugin_spec(tmp_path, monkeypatch, "upzoo", {
        "__init__.py": "", "modeling.py": "def kernel():\n    from .. import run\n" + CLASSES,
    })
    with pytest.raises(BundleError, match=r"upzoo[/\\]modeling\.py:2: relative import goes above the top-level "
                                          r"package 'upzoo'"):
        build_bundle(spec)


def test_an_import_of_bundled_and_other_modules_keeps_the_others(tmp_path, monkeypatch, forget_plugins):
    spec = plugin_spec(tmp_path, monkeypatch, "mixzoo", {
        "__init__.py": "", "helpers.py": "SIGN = -1\n",
        "modeling.py": "import json, mixzoo.helpers as helpers\n" + CLASSES,
    })
    text = build_bundle(spec).files["modeling_mixzoo"]
    assert ("\nimport json\nfrom .mixzoo_helpers import __name__ as _bundled_mixzoo_helpers\n"
            "from . import mixzoo_helpers as helpers\n") in text


def test_a_cached_bundle_is_that_of_the_spec_asked_for(monkeypatch):
    """The cache is keyed by id(spec), which Python reuses once a spec is gone: a bundle of another spec found
    under the id is not returned."""
    from seqzoo.hub import bundle as bundling

    lstm = seqzoo.get_architecture("lstm")
    monkeypatch.setitem(bundling._BUNDLES, (id(lstm), ()), (seqzoo.get_architecture("gru"), "the gru spec's bundle"))
    assert "modeling_seqzoo_lstm" in bundling._cached_bundle(lstm).files


SUMZOO = {
    "__init__.py": "",
    "helpers.py": "def running_sum(hidden_states, total, mask):\n"
                  "    import torch\n\n"
                  "    outputs = []\n"
                  "    for t in range(hidden_states.shape[1]):\n"
                  "        added = total + hidden_states[:, t]\n"
                  "        total = added if mask is None else torch.where(mask[:, t, None], added, total)\n"
                  "        outputs.append(total)\n"
                  "    return torch.stack(outputs, 1), total\n",
    "mixing.py": """
import torch
from seqzoo.layers.mixer import Mixer

from .helpers import running_sum


class RunningSum(Mixer):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.proj = torch.nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        total = hidden_states.new_zeros(hidden_states[:, 0].shape) if state is None else state["sum"]
        outputs, total = running_sum(hidden_states, total, mask)
        return self.proj(outputs), {"sum": total}

    @classmethod
    def state_bytes(cls, config, dtype_bytes=4):
        return config.hidden_size * dtype_bytes
""",
}

# Where neither seqzoo nor the plugin that defines the hybrid's mixer is installed.
_WITHOUT_SEQZOO_OR_PLUGIN = """
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("seqzoo", "sumzoo"):
            raise ImportError(name + " is not installed here")
sys.meta_path.insert(0, Absent())
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
with torch.no_grad():
    print("logits:", model(input_ids=torch.tensor([[5, 17, 33, 8]])).logits[0, -1].tolist())
"""


def plugin_mixer_hybrid(mixer_class, monkeypatch):
    from seqzoo.models import mixers
    from seqzoo.models.gru.configuration_gru import GRUConfig

    monkeypatch.setattr(mixers, "_MIXERS", dict(mixers._MIXERS))
    mixers.register_mixer(mixers.MixerSpec("runsum", mixer_class, GRUConfig, ("orthogonal_init",), "running sum"))
    torch.manual_seed(0)
    config = seqzoo.HybridConfig(hidden_size=16, vocab_size=300, mixer_types=["runsum", "attention"],
                                 mixer_config={"attention": {"num_attention_heads": 2}})
    return seqzoo.HybridForCausalLM(config).eval()


def test_a_hybrid_with_a_plugin_mixer_loads_where_neither_seqzoo_nor_the_plugin_is(tmp_path, monkeypatch,
                                                                                     forget_plugins):
    # The bundle held seqzoo's hybrid code only, and the mixer is looked up by name: the folder loaded nowhere the
    # plugin was not installed ("unknown mixer 'runsum'"). Now its code is bundled and registered by the bundle.
    import json
    import os
    import subprocess

    plugin_spec(tmp_path, monkeypatch, "sumzoo", {**SUMZOO, "modeling.py": CLASSES})  # (importable here)
    from sumzoo.mixing import RunningSum

    model = plugin_mixer_hybrid(RunningSum, monkeypatch)
    with torch.no_grad():
        want = model(torch.tensor([[5, 17, 33, 8]])).logits[0, -1]
    model.save_pretrained(tmp_path / "model")
    files = code_files(tmp_path / "model")
    assert {"sumzoo_mixing.py", "sumzoo_helpers.py", "configuration_seqzoo_hybrid_mixers.py",
            "modeling_seqzoo_hybrid_mixers.py"} <= files
    for name in sorted(files):
        assert import_problems(tmp_path / "model" / name, files) == []
    auto_map = json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_seqzoo_hybrid_mixers.HybridConfig"
    assert auto_map["AutoModelForCausalLM"] == "modeling_seqzoo_hybrid_mixers.HybridForCausalLM"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", _WITHOUT_SEQZOO_OR_PLUGIN, str(tmp_path / "model")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.split("logits:")[1])
    torch.testing.assert_close(torch.tensor(got), want, rtol=1e-5, atol=1e-6)


class UnbundledSum(Mixer):
    """A plugin mixer whose module (this test file, which imports `seqzoo` whole) cannot go into a code bundle."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.proj = torch.nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, *, state=None, mask=None, **context):
        total = hidden_states.cumsum(1) + (0 if state is None else state["sum"][:, None])
        return self.proj(total), {"sum": total[:, -1]}


def test_a_plugin_mixer_whose_code_cannot_be_bundled_is_warned_about_at_save(tmp_path, monkeypatch, caplog):
    import json

    model = plugin_mixer_hybrid(UnbundledSum, monkeypatch)
    with caplog.at_level("WARNING", logger="seqzoo"):
        model.save_pretrained(tmp_path)
    assert (f"the code bundle of {tmp_path} holds none of its plugin mixer(s) 'runsum' "
            f"(tests.hub.test_bundle.UnbundledSum) (") in caplog.text
    assert "the saved folder loads only where the plugin is installed" in caplog.text
    assert "`import seqzoo` binds the package name 'seqzoo'" in caplog.text  # (why)
    assert "modeling_seqzoo_hybrid.py" in code_files(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["auto_map"]["AutoConfig"] == (
        "configuration_seqzoo_hybrid.HybridConfig")


def test_an_architecture_defined_in_the_script_being_run_is_named(monkeypatch):
    # find_spec('__main__') failed with "__main__.__spec__ is None", naming neither the class nor the fix.
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    config = type("ScriptConfig", (seqzoo.LSTMConfig,), {"model_type": "seqzoo_scriptarch", "__module__": "__main__"})
    spec = SimpleNamespace(model_type="seqzoo_scriptarch", config_class=config, model_class=seqzoo.LSTMModel,
                           heads={"causal-lm": seqzoo.LSTMForCausalLM})
    with pytest.raises(BundleError, match=r"ScriptConfig is defined in the script being run \(module __main__\), so "
                                          r"its code cannot go into the code bundle.*define it in an importable "
                                          r"module"):
        build_bundle(spec)


def test_a_model_whose_code_cannot_be_bundled_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    # (save_pretrained wrote config.json and the weights, then failed on the bundle: a folder without code or
    # auto_map was left behind)
    from seqzoo.hub import bundle
    from seqzoo.models import modeling_utils

    def unbundlable(spec):
        raise BundleError("ScriptConfig is defined in the script being run (module __main__)")

    monkeypatch.setattr(bundle, "_cached_bundle", unbundlable)
    model = seqzoo.create_model("lstm-tiny")
    assert modeling_utils._own_architecture(model) is not None
    with pytest.raises(BundleError, match="defined in the script being run"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_refreshing_a_hybrids_code_bundles_its_plugin_mixers_too(tmp_path, monkeypatch, forget_plugins):
    """`seqzoo publish --refresh-code` built the bundle of the architecture alone: a hybrid's plugin mixer code, which
    save_pretrained bundles, went missing from the refreshed repository (its auto_map then named seqzoo's plain
    hybrid, which knows no such mixer)."""
    from huggingface_hub import constants

    from seqzoo.hub import publishing
    from tests.hub.fake_hub import FakeHub

    plugin_spec(tmp_path, monkeypatch, "sumzoo", {**SUMZOO, "modeling.py": CLASSES})
    from sumzoo.mixing import RunningSum

    plugin_mixer_hybrid(RunningSum, monkeypatch).save_pretrained(tmp_path / "model")
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub.repos["me/hybrid"] = {path.name: path.read_bytes() for path in (tmp_path / "model").iterdir()}
        publishing.refresh_code("me/hybrid")
        (commit,) = hub.commits
    assert "sumzoo_mixing.py" in commit.files and "modeling_seqzoo_hybrid_mixers.py" in commit.files
