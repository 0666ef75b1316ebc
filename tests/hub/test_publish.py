"""Uploading through huggingface_hub to a loopback Hub: what is committed, and the errors when it cannot be."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import pytest
from huggingface_hub import ModelCard, constants

from seqzoo.cli import main
from seqzoo.hub import PublishError, export_folder, publish
from seqzoo.tokenizer import byte_tokenizer
from tests.conftest import python_path, tiny_model
from tests.hub.conftest import hub_env, repo_id, run_python, tiny_byte_model
from tests.hub.fake_hub import FakeHub

TOKEN = "hf_fake_write_token"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A loopback Hub that the in-process huggingface_hub talks to (what HF_ENDPOINT sets), a token in HF_TOKEN,
    and a private temporary directory, so a test can see whether publishing left anything behind."""
    staging_root = tmp_path / "tmp"
    staging_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging_root))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub() as fake:
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        # File URLs are built from this template, which huggingface_hub fills from HF_ENDPOINT at import.
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the loopback Hub is reachable even then
        fake.staging_root = staging_root
        yield fake


def folder_bytes(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_publish_commits_the_exported_folder(hub, saved_models, exports):
    url = publish(saved_models["lstm"], repo_id("lstm"), private=True, revision="v1", commit_message="First upload")

    assert hub.routes() == ["create_repo", "branch", "repo_info", "validate_yaml", "preupload", "commit"]
    assert json.loads(hub.request("create_repo").body) == {
        "name": "tiny-lstm", "organization": "seqzoo-test", "visibility": "private"}
    publishing = [r for r in hub.requests if r.route != "agent_harnesses"]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in publishing)
    assert [r.path for r in hub.requests if r.route == "branch"] == [f"/api/models/{repo_id('lstm')}/branch/v1"]
    (commit,) = hub.commits
    assert (commit.repo_id, commit.revision, commit.summary) == (repo_id("lstm"), "v1", "First upload")
    # Exactly the folder a dry run builds, byte for byte: weights, config with auto_map, card, code, tokenizer.
    expected = folder_bytes(exports["lstm"])
    assert sorted(commit.files) == sorted(expected)
    for name in ("config.json", "model.safetensors", "README.md", "modeling_seqzoo_lstm.py"):
        assert commit.files[name] == expected[name], name
    assert json.loads(commit.files["config.json"])["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_seqzoo_lstm.LSTMForCausalLM")
    assert url.startswith(f"{hub.endpoint}/{repo_id('lstm')}/commit/")
    assert list(hub.staging_root.iterdir()) == []


def test_publish_defaults_commit_to_main_with_a_default_message(hub, saved_models):
    publish(saved_models["gru"], repo_id("gru"))
    assert hub.routes() == ["create_repo", "repo_info", "validate_yaml", "preupload", "commit"]
    assert "visibility" not in json.loads(hub.request("create_repo").body)
    (commit,) = hub.commits
    assert (commit.revision, commit.summary) == ("main", "Publish a seqzoo gru checkpoint")


def test_a_token_given_is_used_over_HF_TOKEN(hub, saved_models):
    publish(saved_models["gru"], repo_id("gru"), token="hf_given_token")
    publishing = [r for r in hub.requests if r.route != "agent_harnesses"]
    assert publishing and all(r.headers.get("authorization") == "Bearer hf_given_token" for r in publishing)


def test_publish_without_a_token_fails_before_any_request(hub, monkeypatch, tmp_path, saved_models):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    with pytest.raises(PublishError, match="no Hugging Face token.*HF_TOKEN.*hf auth login"):
        publish(saved_models["lstm"], repo_id("lstm"))
    assert hub.requests == []
    assert list(hub.staging_root.iterdir()) == []


@pytest.mark.parametrize(
    "route, failure, message",
    [
        ("create_repo", 401, r"did not accept the token \(401 Unauthorized\) while creating the repository.*HF_TOKEN"),
        ("create_repo", 403, r"may not write to 'seqzoo-test/tiny-lstm' \(403 Forbidden\).*namespace 'seqzoo-test'"),
        ("preupload", 404, r"'seqzoo-test/tiny-lstm' was not found \(404 Not Found\) while uploading the files"),
        ("commit", 422, r"the Hub at http://127\.0\.0\.1:\d+ answered 422 while uploading the files: fake hub: commit "
                        r"answers 422"),
        ("create_repo", "drop", r"lost the connection to http://127\.0\.0\.1:\d+ while creating the repository "
                                r"\(RemoteProtocolError.*\); nothing was committed"),
        ("commit", "drop", r"lost the connection .* while uploading the files .*may or may not have been made"),
    ],
)
def test_publish_failures_are_clear_and_leave_nothing_behind(hub, saved_models, route, failure, message):
    before = folder_bytes(saved_models["lstm"])
    hub.fail[route] = failure
    with pytest.raises(PublishError, match=message):
        publish(saved_models["lstm"], repo_id("lstm"))
    assert route in hub.routes()
    assert hub.commits == []
    assert list(hub.staging_root.iterdir()) == []  # the staging folder is gone
    assert folder_bytes(saved_models["lstm"]) == before  # and the model folder untouched


def test_cli_publish_uses_HF_ENDPOINT_and_HF_TOKEN(saved_models, tmp_path):
    with FakeHub() as hub:
        env = hub_env(tmp_path / "home", HF_ENDPOINT=hub.endpoint, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="0")
        result = run_python(["-m", "seqzoo", "publish", str(saved_models["rnn"]), repo_id("rnn"),
                             "--commit-message", "from the CLI", "--license", "mit"], env=env, cwd=tmp_path)
    (commit,) = hub.commits
    assert commit.summary == "from the CLI"
    assert f"{hub.endpoint}/{repo_id('rnn')}/commit/" in result.stdout
    assert json.loads(commit.files["config.json"])["auto_map"]["AutoConfig"] == "configuration_seqzoo_rnn.RNNConfig"
    assert commit.files["README.md"].startswith(b"---\n") and b"license: mit\n" in commit.files["README.md"]


def test_cli_publish_reports_errors_plainly(saved_models, monkeypatch, tmp_path, capsys, caplog):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    # A user's mistake is one error line and exit status 2 (1 is kept for seqzoo's own failures).
    assert main(["publish", str(saved_models["lstm"]), repo_id("lstm")]) == 2
    assert capsys.readouterr().err.startswith("error: no Hugging Face token")
    assert main(["publish", str(saved_models["lstm"]), repo_id("lstm"), "--dry-run"]) == 2
    assert "--dry-run and --output go together" in capsys.readouterr().err
    # --output alone would otherwise upload what the user meant only to build
    assert main(["publish", str(saved_models["lstm"]), repo_id("lstm"), "--output", str(tmp_path / "x")]) == 2
    assert "--dry-run and --output go together" in capsys.readouterr().err
    assert main(["publish", str(saved_models["lstm"])]) == 2
    assert "needs MODEL_DIR and REPO_ID" in capsys.readouterr().err
    assert main(["publish", str(saved_models["lstm"]), repo_id("lstm"), "--dry-run", "--output", str(tmp_path / "x"),
                 "--private", "--revision", "v2"]) == 2
    assert "--private, --revision only apply to an upload" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
    # A folder whose config names a layer more than its weights hold: one line that says what to do, not transformers'
    # load report above it, nor a Python keyword as if it were an option of the command.
    misfit = tmp_path / "misfit"
    shutil.copytree(saved_models["lstm"], misfit)
    config = json.loads((misfit / "config.json").read_text())
    (misfit / "config.json").write_text(json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1}))
    assert main(["publish", str(misfit), repo_id("lstm"), "--dry-run", "--output", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and "does not fit LSTMForCausalLM: missing tensors: " in err, err
    assert "from Python, pass strict=False" in err, err
    assert "LOAD REPORT" not in caplog.text  # (transformers' handler writes to the stderr it found when set up)
    assert not os.path.exists(tmp_path / "y")


def test_publish_over_an_earlier_checkpoint_deletes_what_it_left(hub, saved_models, exports):
    """A repository that held a trained LSTM in shards gets a GRU without a training record: the LSTM's weights,
    adapter, tokenizer files, code and training record go (else transformers or a reader of the record would find them
    beside the GRU's); the owner's own files stay."""
    repo = repo_id("gru")
    earlier = folder_bytes(exports["lstm"])
    assert "seqzoo_training.json" in earlier and "modeling_seqzoo_lstm.py" in earlier
    earlier.pop("model.safetensors")
    earlier.update({"model-00001-of-00002.safetensors": b"x", "model-00002-of-00002.safetensors": b"x",
                    "model.safetensors.index.json": b"{}", "pytorch_model.bin": b"x", "notes.py": b"# mine\n",
                    # the weights of a variant (from_pretrained(variant="fp16") would read them beside the GRU)
                    "model.fp16.safetensors": b"x", "model.fp16-00001-of-00002.safetensors": b"x",
                    "model.safetensors.index.fp16.json": b"{}", "pytorch_model.fp16.bin": b"x",
                    "modeling_my_helpers.py": b"# mine too\n", "data/train.csv": b"a\n", ".gitattributes": b"",
                    # a peft adapter and another tokenizer's files (from_pretrained would apply the adapter to the
                    # GRU; AutoTokenizer would read the stale vocabulary), a generation config, and the same names
                    # in a folder of the owner's, which stay
                    "adapter_config.json": b"{}", "adapter_model.safetensors": b"x", "vocab.json": b"{}",
                    "merges.txt": b"", "generation_config.json": b"{}", "data/adapter_config.json": b"{}",
                    # the owner's: seqzoo's note is a bundled file's first line, not a line below it
                    "seqzoo_notes.py": b"# my notes\n# copied into the self-contained code of this checkpoint\n"})
    hub.repos[repo] = dict(earlier)

    publish(saved_models["gru"], repo)

    (commit,) = hub.commits
    fresh = folder_bytes(exports["gru"])
    assert "seqzoo_training.json" not in fresh
    assert sorted(commit.files) == sorted(fresh)
    bundled_for_lstm = sorted(name for name in earlier if name.endswith(".py") and name not in fresh
                              and name not in ("notes.py", "modeling_my_helpers.py", "seqzoo_notes.py"))
    assert "modeling_seqzoo_lstm.py" in bundled_for_lstm
    assert sorted(commit.deleted) == sorted(
        ["seqzoo_training.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
         "model.safetensors.index.json", "pytorch_model.bin", "adapter_config.json", "adapter_model.safetensors",
         "model.fp16.safetensors", "model.fp16-00001-of-00002.safetensors", "model.safetensors.index.fp16.json",
         "pytorch_model.fp16.bin", "vocab.json", "merges.txt",
         *(["generation_config.json"] if "generation_config.json" not in fresh else []),
         *bundled_for_lstm])
    assert sorted(hub.repos[repo]) == sorted([*fresh, "notes.py", "modeling_my_helpers.py", "seqzoo_notes.py",
                                              "data/train.csv", "data/adapter_config.json", ".gitattributes"])
    assert list(hub.staging_root.iterdir()) == []


def test_refresh_code_rewrites_only_the_code_of_an_existing_repository(hub, exports):
    folder = exports["lstm"]
    repo = repo_id("lstm")
    old = folder_bytes(folder)
    # As an older seqzoo published it: other code, a bundled module the new code no longer has, no version record.
    old["modeling_seqzoo_lstm.py"] = b"# code of an older seqzoo\n"
    old["seqzoo_layers_retired.py"] = (b"# seqzoo/layers/retired.py from seqzoo 0.0.1, copied into the self-contained "
                                       b"code of this checkpoint with its\n# a module the new bundle no longer needs\n")
    old["modeling_my_helpers.py"] = b"# the user's own module, named like a bundled one\n"
    old.pop("seqzoo_bundle.json")
    config = json.loads(old["config.json"])
    config["auto_map"]["AutoModel"] = "modeling_seqzoo_lstm.OldName"
    old["config.json"] = json.dumps(config).encode()
    old["notes.py"] = b"# the user's own file\n"
    hub.repos[repo] = dict(old)

    assert main(["publish", "--refresh-code", repo, "--commit-message", "New code"]) == 0

    (commit,) = hub.commits
    assert commit.summary == "New code"
    assert commit.deleted == ["seqzoo_layers_retired.py"]
    fresh = folder_bytes(folder)
    code = sorted(name for name in fresh if name.endswith(".py"))
    assert sorted(commit.files) == sorted(code + ["config.json", "seqzoo_bundle.json"])
    for name in code:
        assert commit.files[name] == fresh[name], name
    new_config = json.loads(commit.files["config.json"])
    assert new_config["auto_map"] == json.loads(fresh["config.json"])["auto_map"]
    assert {k: v for k, v in new_config.items() if k != "auto_map"} == {
        k: v for k, v in config.items() if k != "auto_map"}
    after = hub.repos[repo]
    for name in ("model.safetensors", "README.md", "tokenizer.json", "notes.py", "modeling_my_helpers.py"):
        assert after[name] == old[name], name


def test_cli_publish_passes_private_revision_and_license_on(hub, saved_models):
    assert main(["publish", str(saved_models["gru"]), repo_id("gru"), "--private", "--revision", "v2", "--license",
                 "other", "--license-name", "my-license-1.0", "--license-link", "LICENSE"]) == 0
    assert json.loads(hub.request("create_repo").body)["visibility"] == "private"
    assert [r.path for r in hub.requests if r.route == "branch"] == [f"/api/models/{repo_id('gru')}/branch/v2"]
    (commit,) = hub.commits
    assert commit.revision == "v2"
    card = ModelCard(commit.files["README.md"].decode())
    assert (card.data.license, card.data.license_name, card.data.license_link) == ("other", "my-license-1.0",
                                                                                    "LICENSE")


def test_cli_refresh_code_commits_to_the_revision_given(hub, exports):
    hub.repos[repo_id("lstm")] = folder_bytes(exports["lstm"])
    assert main(["publish", "--refresh-code", repo_id("lstm"), "--revision", "v2"]) == 0
    (commit,) = hub.commits
    assert commit.revision == "v2"


@pytest.mark.parametrize("flags", [["--dry-run"], ["--output", "out"], ["--license", "mit"],
                                   ["--license-name", "x"]])
def test_refresh_code_refuses_what_only_a_publication_takes(hub, exports, capsys, flags):
    """--refresh-code rewrites code in place: a dry run would have uploaded, and a license would have been dropped."""
    hub.repos[repo_id("lstm")] = folder_bytes(exports["lstm"])
    assert main(["publish", "--refresh-code", repo_id("lstm"), *flags]) == 2
    err = capsys.readouterr().err
    assert "--refresh-code REPO_ID takes no model folder" in err and (flags[0] == "--dry-run" or flags[0] in err)
    assert hub.requests == [] and hub.commits == []


@pytest.mark.parametrize("license, message", [
    ("MIT", r"license 'MIT' is not a license identifier of the Hugging Face Hub \(did you mean 'mit'\?\)"),
    ("my own terms", r"license 'my own terms' is not a license identifier .*repositories-licenses.*--license other "
                     r"--license-name"),
])
def test_publish_refuses_a_license_the_hub_does_not_know_before_any_request(hub, saved_models, capsys, license,
                                                                            message):
    with pytest.raises(ValueError, match=message):
        publish(saved_models["gru"], repo_id("gru"), license=license)
    assert main(["publish", str(saved_models["gru"]), repo_id("gru"), "--license", license]) == 2
    assert re.match("error: " + message, capsys.readouterr().err)
    with pytest.raises(ValueError, match=message):
        tiny_byte_model("gru").push_to_hub(repo_id("gru"), tokenizer=byte_tokenizer(), license=license)
    assert hub.requests == [] and hub.commits == []
    assert list(hub.staging_root.iterdir()) == []


def test_refresh_code_refuses_what_is_not_a_seqzoo_model(hub, capsys):
    hub.repos["someone/gpt"] = {"config.json": b'{"model_type": "gpt2"}'}
    assert main(["publish", "--refresh-code", "someone/gpt"]) == 2
    assert "does not hold a seqzoo model" in capsys.readouterr().err
    hub.repos["someone/data"] = {"data.csv": b"a,b\n"}
    assert main(["publish", "--refresh-code", "someone/data"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert main(["publish", "--refresh-code", "someone/data", "some-folder"]) == 2
    assert "takes no model folder" in capsys.readouterr().err
    assert hub.commits == []


@pytest.mark.parametrize("config, message", [(b"{not json", r"is not valid JSON \(Expecting property name"),
                                             (b"[1, 2]", r"must hold a JSON object \(a model's configuration\); "
                                                         r"got a list")])
def test_refresh_code_names_a_damaged_config_json(hub, capsys, config, message):
    # (a config.json that is no JSON stopped the command with json's bare "Expecting property name ..."; a JSON list,
    # with AttributeError: 'list' object has no attribute 'get')
    hub.repos["someone/damaged"] = {"config.json": config}
    assert main(["publish", "--refresh-code", "someone/damaged"]) == 2
    assert re.search(r"error: 'someone/damaged': its config.json " + message, capsys.readouterr().err)
    assert hub.commits == []


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(hub, tmp_path, saved_models):
    # The repository would load, and its card's usage snippet fail ("token id 117, outside the vocabulary").
    model = tiny_model("gru-tiny", vocab_size=100)
    message = (r"the tokenizer has 258 tokens, more than the 100 rows of the model's embedding \(vocab_size\): the "
               r"ids it gives past 99 have no embedding")
    with pytest.raises(ValueError, match=message):
        model.push_to_hub(repo_id("gru"), tokenizer=byte_tokenizer())
    with pytest.raises(ValueError, match=message):
        export_folder(model, tmp_path / "export", repo_id=repo_id("gru"), tokenizer=byte_tokenizer())
    assert hub.requests == [] and not (tmp_path / "export").exists()
    export_folder(saved_models["gru"], tmp_path / "fits", repo_id=repo_id("gru"))  # (258 tokens, 258 rows)


def test_model_push_to_hub_commits_what_seqzoo_publish_exports(hub, tmp_path):
    model = tiny_byte_model("gru")
    url = model.push_to_hub(repo_id("gru"), tokenizer=byte_tokenizer(), commit_message="pushed")
    expected = folder_bytes(export_folder(model, tmp_path / "export", repo_id=repo_id("gru"),
                                          tokenizer=byte_tokenizer()))
    (commit,) = hub.commits
    assert commit.summary == "pushed" and url.startswith(f"{hub.endpoint}/{repo_id('gru')}/commit/")
    assert sorted(commit.files) == sorted(expected)
    for name in ("config.json", "model.safetensors", "README.md", "modeling_seqzoo_gru.py", "tokenizer.json"):
        assert commit.files[name] == expected[name], name
    assert list(hub.staging_root.iterdir()) == []


def test_model_push_to_hub_refuses_what_it_cannot_publish_before_any_request(hub, tmp_path):
    model = tiny_byte_model("gru")
    with pytest.raises(ValueError, match=r"needs its tokenizer: pass tokenizer=\.\.\..*seqzoo\.byte_tokenizer\(\)"):
        model.push_to_hub(repo_id("gru"))
    with pytest.raises(TypeError, match=r"does not take create_pr, max_shard_size: it publishes as `seqzoo publish`"):
        model.push_to_hub(repo_id("gru"), tokenizer=byte_tokenizer(), create_pr=True, max_shard_size="1GB")
    with pytest.raises(ValueError, match=r"push_to_hub=True.*model\.push_to_hub\(repo_id, tokenizer=\.\.\.\) or "
                                         r"`seqzoo publish FOLDER REPO_ID`"):
        model.save_pretrained(tmp_path / "folder", push_to_hub=True)
    assert hub.requests == [] and hub.commits == []
    assert not (tmp_path / "folder").exists()


def test_cli_publish_without_private_leaves_the_visibility_alone(hub, saved_models, capsys):
    # (private=False sent on would ask for a public repository where the user asked for nothing)
    assert main(["publish", str(saved_models["gru"]), repo_id("gru")]) == 0
    assert "visibility" not in json.loads(hub.request("create_repo").body)
    assert f"published {saved_models['gru']} to {repo_id('gru')}: {hub.endpoint}/" in capsys.readouterr().out


def test_cli_dry_run_names_what_it_built_and_refuses_upload_options(saved_models, tmp_path, capsys):
    out = tmp_path / "built"
    assert main(["publish", str(saved_models["gru"]), repo_id("gru"), "--dry-run", "--output", str(out)]) == 0
    files = sorted(path.name for path in out.iterdir())
    assert "config.json" in files and "README.md" in files
    assert repo_id("gru") in (out / "README.md").read_text()  # (the card's usage lines load the repository named)
    assert capsys.readouterr().out.strip() == (f"built {out} for {repo_id('gru')} ({len(files)} files, nothing "
                                               f"uploaded): {', '.join(files)}")
    # (a commit message with --dry-run was accepted and went nowhere)
    assert main(["publish", str(saved_models["gru"]), repo_id("gru"), "--dry-run", "--output", str(tmp_path / "x"),
                 "--commit-message", "m"]) == 2
    assert "--commit-message only apply to an upload" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_hidden_state_a_converted_word_lm_starts_from_is_published_with_it(hub, saved_models, tmp_path):
    # (publish left out hidden_state.safetensors, which `convert word-lm --hidden` writes beside the model, and a
    # republish deleted it from the repository as a stale model file)
    import torch
    from transformers import AutoConfig

    from seqzoo.conversions.word_lm import save_hidden_state

    folder = tmp_path / "word-lm"
    shutil.copytree(saved_models["lstm"], folder)
    config = AutoConfig.from_pretrained(folder)
    hidden = tuple(torch.randn(config.num_hidden_layers, 1, config.hidden_size) for _ in range(2))
    save_hidden_state(hidden, config, folder / "hidden_state.safetensors")
    saved = (folder / "hidden_state.safetensors").read_bytes()
    repo = repo_id("word-lm")
    hub.repos[repo] = {"hidden_state.safetensors": b"an earlier one", "config.json": b"{}"}

    publish(folder, repo)

    (commit,) = hub.commits
    assert commit.files["hidden_state.safetensors"] == saved and "hidden_state.safetensors" not in commit.deleted
    assert hub.repos[repo]["hidden_state.safetensors"] == saved
    export_folder(folder, tmp_path / "built", repo_id=repo)
    assert (tmp_path / "built" / "hidden_state.safetensors").read_bytes() == saved


@pytest.mark.parametrize("planted", ["link to a private file", "another model's state", "a Mamba model's"])
def test_a_hidden_state_file_that_is_none_of_the_models_is_refused_not_uploaded(hub, saved_models, tmp_path, planted):
    # (it was carried as it was: a hidden_state.safetensors linking to ~/.ssh/id_rsa, in a folder from elsewhere, went
    # up with the model, and so did a damaged file or another model's state)
    import torch
    from transformers import AutoConfig

    from seqzoo.conversions.word_lm import save_hidden_state

    folder = tmp_path / "word-lm"
    shutil.copytree(saved_models["mamba" if "Mamba" in planted else "lstm"], folder)
    planted_file = folder / "hidden_state.safetensors"
    if planted.startswith("link"):
        (tmp_path / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
        planted_file.symlink_to(tmp_path / "id_rsa")
        error = "cannot read .*hidden_state.safetensors' as a hidden state"
    elif planted.startswith("another"):
        config = AutoConfig.from_pretrained(folder)
        save_hidden_state(torch.zeros(config.num_hidden_layers + 1, 1, config.hidden_size),
                          AutoConfig.for_model("seqzoo_gru", num_hidden_layers=config.num_hidden_layers + 1,
                                               hidden_size=config.hidden_size), planted_file)
        error = "is not a hidden state of this model"
    else:
        planted_file.write_bytes(b"")
        error = "a saved hidden state goes with an Elman RNN, LSTM or GRU .* not with a MambaConfig model"
    with pytest.raises(ValueError, match=error):
        publish(folder, repo_id("word-lm"))
    with pytest.raises(ValueError, match=error):
        export_folder(folder, tmp_path / "built", repo_id=repo_id("word-lm"))
    assert not hub.commits and not (tmp_path / "built").exists()


def test_a_model_holding_peft_adapters_is_refused_with_the_merge(hub, saved_models, tmp_path):
    # (a PeftModel saved its adapter alone, and the bundle failed on a config.json never written; a folder with the
    # adapter saved beside the model failed in transformers' load, on peft's version)
    from peft import get_peft_model

    import seqzoo

    model = tiny_byte_model("lstm")
    adapted = get_peft_model(model, seqzoo.peft_config(model))
    with pytest.raises(ValueError, match=r"PeftModel\w* holds peft adapter layers \(.*LoraModel.*\); merge them "
                                         r"into its weights first .*merge_and_unload\(\)"):
        export_folder(adapted, tmp_path / "out", repo_id=repo_id("peft"), tokenizer=byte_tokenizer())
    folder = tmp_path / "with-adapter"
    shutil.copytree(saved_models["lstm"], folder)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match=r"with-adapter holds a peft adapter \(adapter_config.json\) beside the model: "
                                         r"merge it into the weights first"):
        publish(folder, repo_id("peft"))
    assert not (tmp_path / "out").exists() and hub.commits == []
    merged = adapted.merge_and_unload()  # what the error asks for publishes
    export_folder(merged, tmp_path / "merged", repo_id=repo_id("peft"), tokenizer=byte_tokenizer())
    assert (tmp_path / "merged" / "config.json").is_file()


_BUNDLED_PUSH = """
import importlib.abc, sys
class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "seqzoo":
            raise ImportError("this seqzoo cannot be imported here")
sys.meta_path.insert(0, Broken())
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
model.push_to_hub(sys.argv[2], tokenizer=AutoTokenizer.from_pretrained(sys.argv[1]))
"""


def test_the_bundled_push_to_hub_uploads_the_tokenizer_it_is_given(hub, exports, tmp_path):
    """Where seqzoo is absent the bundled model pushes through transformers' upload, which takes no tokenizer: the
    tokenizer is pushed beside it (it was dropped without a word)."""
    env = hub_env(tmp_path / "home", HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint, HF_TOKEN=TOKEN)
    env["PYTHONPATH"] = python_path()  # (the network guard only)
    run_python(["-c", _BUNDLED_PUSH, str(exports["gru"]), repo_id("gru")], env, tmp_path)
    files = set(hub.repos[repo_id("gru")])
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files, files


def test_the_bundled_push_hands_the_tokenizer_the_uploads_options_and_pull_request(monkeypatch):
    """With create_pr=True the model went up as a pull request and the tokenizer straight to the branch, and the
    description and tags were the model's only."""
    from types import SimpleNamespace

    from transformers import PreTrainedModel

    pushed = {}
    monkeypatch.setattr(PreTrainedModel, "push_to_hub", lambda self, repo_id, **options: (
        pushed.setdefault("model", options), SimpleNamespace(pr_revision="refs/pr/7"))[1])
    tokenizer = SimpleNamespace(push_to_hub=lambda repo_id, **options: pushed.setdefault("tokenizer", options))
    model = tiny_byte_model("gru")
    model._auto_class = "AutoModelForCausalLM"  # (as the bundled copy, where seqzoo's publisher is absent)
    model.push_to_hub("me/a", tokenizer=tokenizer, create_pr=True, commit_description="why", tags=["x"])
    assert pushed["model"]["create_pr"] is True
    assert pushed["tokenizer"]["revision"] == "refs/pr/7" and "create_pr" not in pushed["tokenizer"]
    assert (pushed["tokenizer"]["commit_description"], pushed["tokenizer"]["tags"]) == ("why", ["x"])
