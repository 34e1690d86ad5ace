"""probe.py: linear CKA is 1 for a model against itself and blind to rotations; translation retrieval
gets constructed cases right; layer_states matches the model's own forward pass; neighbours has one
row per level; every command runs through the command line on a trained (plain GPT) checkpoint and a
merge file, and bad input is one line. Tiny random models: no training needed."""
import os
import subprocess
import sys

import pytest
import torch

import probe as P
from checkpoint import model_checkpoint, save_checkpoint
from merge import build_merge
from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 65536  # the real vocabulary: the checkpoints carry the real tokenizer's fingerprint


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; tok comes from there too


def make_model(seed, n_layer=2, d_model=32, embedding="random", table=None):
    torch.manual_seed(seed)
    conf = GPTConfig(vocab_size=V, block_size=64, n_layer=n_layer, n_head=2, d_model=d_model, embedding=embedding)
    m = GPT(conf, table)
    m.table_info = {"kind": "random", "dim": table.shape[1]} if table is not None else {}
    return m.eval()


@pytest.fixture(scope="module")
def table():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 2, (V, 16), generator=g).float() * 2 - 1


@pytest.fixture(scope="module")
def files(table, tok, tmp_path_factory):
    """A frozen-table model, a trainable one, and a merge of two frozen-table experts of different depth."""
    d = tmp_path_factory.mktemp("probe")
    paths = {}
    for name, m in (("glyph", make_model(1, table=table)), ("trainable", make_model(2, embedding="trainable")),
                    ("deep", make_model(3, n_layer=3, table=table))):
        paths[name] = str(d / f"{name}.pt")
        save_checkpoint(model_checkpoint(m, tok), paths[name])
    _, ck = build_merge([paths["glyph"], paths["deep"]])
    paths["merged"] = str(d / "merged.pt")
    save_checkpoint(ck, paths["merged"])
    small = d / "words.tsv"
    small.write_text("# pos\ten\tru\tzh\nnoun\twater\tвода\t水\nnoun\tfire\tогонь\t火\n"
                     "adj\tred\tкрасный\t红\nverb\tgo\tидти\t去\n", encoding="utf-8")
    paths["words"] = str(small)
    return paths


# -----------------------------------------------------------------------------
# the measures themselves

def test_linear_cka_is_one_with_itself_and_blind_to_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))  # a random orthogonal matrix
    assert P.linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert P.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert P.linear_cka(x, x @ q + 5.0) == pytest.approx(1.0, abs=1e-9)  # columns are centred
    y = torch.randn(200, 24, generator=g)
    assert P.linear_cka(x, y) < 0.3  # unrelated representations (different widths) score low
    assert P.linear_cka(x, y) == pytest.approx(P.linear_cka(y, x))


def test_cka_of_a_model_with_itself_is_one_at_every_layer(files, tok):
    probed = P.load_probed([files["glyph"], files["glyph"]], ["a", "b"], "cpu")
    res = P.cka(probed, os.path.join(REPO, "data", "probe", "heldout.txt"), 300, 64)
    m = res["pairs"]["a vs b"]
    assert len(m) == 3 and len(m[0]) == 3  # input table + 2 blocks
    for i in range(3):
        assert m[i][i] == pytest.approx(1.0, abs=1e-6)
        assert res["self"]["a"][i][i] == pytest.approx(1.0, abs=1e-6)
    assert res["tokens"] == 300


def test_layer_states_match_the_models_forward_pass(table):
    m = make_model(4, n_layer=3, table=table)
    idx = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))
    states = P.layer_states(m, idx)
    assert len(states) == 4
    with torch.no_grad():
        torch.testing.assert_close(m.transformer.ln_f(states[-1]), m.hidden_states(idx))
        torch.testing.assert_close(states[0], m.transformer.wte(idx))


def test_retrieval_precision_of_known_cases():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(50, 8, generator=g)
    assert P.retrieval_precision(src, src.clone()) == {1: 1.0, 5: 1.0}  # identical vectors: always found
    assert P.retrieval_precision(src, src + 10.0) == {1: 1.0, 5: 1.0}  # a language-wide offset is removed
    derange = torch.roll(torch.arange(50), 1)
    assert P.retrieval_precision(src, src[derange])[1] == 0.0  # every right answer moved elsewhere
    half = src.clone()
    half[25:] = torch.randn(25, 8, generator=g)
    p = P.retrieval_precision(src, half)[1]
    assert 0.5 <= p < 0.75  # the first half is found; the random half only by chance


def test_translate_with_identical_vectors_for_a_word_and_its_translation(monkeypatch, tok):
    """A model whose vectors are the same for a word and its translation finds every translation."""
    table = {"en": ["water", "fire", "red"], "ru": ["вода", "огонь", "красный"]}
    meaning = {w: i for ws in table.values() for i, w in enumerate(ws)}
    vecs = torch.eye(3) + 0.1

    def fake(model, tok_, seq, context="", pool="mean"):
        rows = torch.stack([vecs[meaning[w]] for w in seq])
        return {"table": rows, "layer 1": rows, "head": torch.randn(len(seq), 3)}
    monkeypatch.setattr(P, "word_vectors", fake)
    r = P.translate(None, tok, table, ["en-ru"])["en-ru"]
    assert r["table"] == {"p@1": 1.0, "p@5": 1.0} and r["layer 1"]["p@1"] == 1.0
    assert r["n"] == 3 and r["chance@1"] == pytest.approx(1 / 3) and r["chance@5"] == 1.0


def test_pos_agreement_of_known_cases():
    pos = ["noun"] * 4 + ["verb"] * 4
    vecs = torch.tensor([[1.0, 0.1 * i] for i in range(4)] + [[-1.0, 0.1 * i] for i in range(4)])
    share, chance = P.pos_agreement(vecs, pos, k=3)
    assert share == 1.0 and chance == pytest.approx(2 * 4 * 3 / (8 * 7))  # two clusters, one per part of speech


def test_neighbours_has_k_per_level_and_leaves_the_word_out(files, tok):
    (_, m, t), = P.load_probed([files["glyph"]], [], "cpu")
    words = P.all_words(P.read_word_list(files["words"]))
    r = P.neighbours(m, t, ["water", "king"], words, k=3)
    assert list(r) == ["water", "king"]
    for per in r.values():
        assert list(per) == ["table", "layer 1", "layer 2", "head"]
        assert all(len(near) == 3 for near in per.values())
    assert all(w != "water" for near in r["water"].values() for w, _ in near)
    vecs = P.word_vectors(m, t, words, pool="last")
    assert {lv: tuple(v.shape) for lv, v in vecs.items()} == {lv: (len(words), 32) for lv in vecs}


def test_a_merge_is_probed_expert_by_expert(files):
    probed = P.load_probed([files["merged"]], ["m"], "cpu")
    assert [(lb, m.config.n_layer) for lb, m, _ in probed] == [("m/expert0", 2), ("m/expert1", 3)]


# -----------------------------------------------------------------------------
# the command line

def run(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "probe.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["neighbours", "translate", "cka", "all"])
def test_every_command_runs_on_trained_and_merged_checkpoints(files, command, tmp_path):
    out = tmp_path / "p"
    r = run(command, files["glyph"], files["trainable"], files["merged"], f"--word_list={files['words']}",
            "--words=water,水", "--k=2", "--max_tokens=200", "--device=cpu",
            f"--out_md={out}.md", f"--out_png={out}.png", f"--out_json={out}.json")
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "p.md").read_text(encoding="utf-8")
    assert "merged/expert1" in md
    if command in ("translate", "all"):
        assert "chance 25.00% / 100.00%" in md  # 4 pairs in the small word list
    if command in ("cka", "all"):
        assert "glyph vs trainable" in md
    if command in ("neighbours", "all"):
        assert "nearest en neighbours with its part of speech (noun/verb/adjective; chance 16.7%)" in md
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("args, says", [
    ([], "the first argument must be a command"),
    (["nonsense"], "the first argument must be a command"),
    (["cka"], "no checkpoint given"),
    (["cka", "missing.pt"], "no such checkpoint file"),
    (["translate", "GLYPH", "--pairs=en-fr"], "is not two different language columns"),
    (["neighbours", "GLYPH", "--pool=max"], "pool='max'"),
    (["cka", "GLYPH", "--text=nowhere.txt"], "text=nowhere.txt: no such file or dataset folder"),
    (["cka", "GLYPH", "--labels=a,b"], "labels: 2 given for 1 checkpoints"),
    (["cka", "GLYPH", "--out_png=GLYPH"], "writing there would destroy it"),
    (["cka", "GLYPH", "--windw=3"], "unknown config key 'windw'"),
])
def test_bad_input_is_one_line(files, args, says):
    """In-process through script_main (the path the command line takes; a subprocess per case would
    spend its seconds importing torch); one case below goes through a real subprocess."""
    from common import script_main
    args = [a.replace("GLYPH", files["glyph"]) for a in args]
    with pytest.raises(SystemExit) as e:
        script_main("probe.py", P.main, args)
    msg = str(e.value.code)
    assert len(msg.splitlines()) == 1 and msg.startswith("probe.py: error: ") and says in msg, msg


def test_bad_input_through_the_command_line(files):
    r = run("cka", files["glyph"], "--text=nowhere.txt")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1
    assert lines[0] == "probe.py: error: text=nowhere.txt: no such file or dataset folder"


def test_help_lists_the_commands_and_keys(capsys):
    with pytest.raises(SystemExit) as e:
        P.main(["cka", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "neighbours | translate | cka | all" in out and "--max_tokens=4096" in out
    assert "--COMMANDS" not in out  # constants are not options


def test_held_out_text_from_a_file_or_a_dataset_folders_val_split(data_root, tok, tmp_path):
    from data.common import open_split
    ids = P.text_tokens(os.path.join(data_root, "tiny"), tok, 50)
    assert ids == [int(i) for i in open_split(os.path.join(data_root, "tiny"), "val", tok)[:50]]
    f = tmp_path / "t.txt"
    f.write_text("the king doth speak", encoding="utf-8")
    assert P.text_tokens(str(f), tok, 1000) == tok.encode("the king doth speak")


def test_semantics_report_writes_the_tables_and_the_figure(files, tmp_path):
    """reproduce.py's entry point: the whole experiment from {label: checkpoint}."""
    md, png = str(tmp_path / "s.md"), str(tmp_path / "s.png")
    r = P.semantics_report({"g": files["glyph"], "t": files["trainable"]},
                           os.path.join(REPO, "data", "probe", "heldout.txt"), md, png, "cpu")
    assert set(r) == {"neighbours", "pos", "translate", "cka"} and list(r["cka"]["pairs"]) == ["g vs t"]
    assert r["translate"]["g"]["en-ru"]["n"] == 346
    text = open(md, encoding="utf-8").read()
    assert "chance 0.29% / 1.45%" in text and os.path.getsize(png) > 1000


def test_a_checkpoint_imported_from_hugging_face_probes_like_its_original(files, tmp_path):
    """export_hf.py out and back in: the same weights, so CKA with the original is 1 at every level."""
    pytest.importorskip("transformers")
    import json
    import export_hf
    export_hf.export(files["glyph"], str(tmp_path / "hf"))
    export_hf.import_folder(str(tmp_path / "hf"), str(tmp_path / "imported.pt"))
    out = tmp_path / "r.json"
    r = run("all", files["glyph"], str(tmp_path / "imported.pt"), "--labels=original,imported", "--k=2",
            f"--word_list={files['words']}", "--max_tokens=200", "--device=cpu", f"--out_json={out}")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text(encoding="utf-8"))
    assert all(abs(res["cka"]["pairs"]["original vs imported"][i][i] - 1) < 1e-6 for i in range(3))
    assert res["translate"]["original"] == res["translate"]["imported"]
