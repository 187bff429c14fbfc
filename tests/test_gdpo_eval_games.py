"""Safe-GDPO and LLM evaluation on SafeGame: game prompts and keys, the game catalog and oracle
loaded by domain, movie keys unchanged, and results labels per domain."""
from __future__ import annotations

import json

import pytest

from safecrs_core.data.rows import rows_fingerprint
from safecrs_core.evaluation import evaluate as E
from safecrs_core.train import gdpo as G
from safecrs_core.safety.oracle import UNKNOWN, UNSAFE
from safecrs_core.pipeline import read_manifest
from test_evaluate import _fake_stage  # a completed stage folder with a given manifest
from test_games_eval import games_world  # noqa: F401  (fixture: game catalog and oracle)

MOVIES = type("MovieThing", (), {"domain": "movies"})()  # a catalog/oracle stand-in of the movie domain


@pytest.fixture(scope="module")
def games_bench(games_world):
    """``(DatasetDict, stats, stage)`` of the smoke SafeGame benchmark."""
    from safecrs_core.benchmark import benchmark_for_profile

    return benchmark_for_profile("smoke", domain="games")


@pytest.fixture(scope="module")
def game_rows(games_bench):
    return [games_bench[0]["test"][i] for i in range(3)]


def _system_text(system, rows):
    return system.prompts(rows, k=10)[0][0]["content"]


@pytest.fixture
def fake_generate(monkeypatch):
    """``models.generate`` answers with the stub model's fixed completion; the prompts it got are
    recorded."""
    import safecrs_core.train.models as models

    got = []

    def generate(model, tok, prompts, **kw):
        got.extend(prompts)
        return [model.answer] * len(prompts)
    monkeypatch.setattr(models, "generate", generate)
    return got


class _Answer:
    def __init__(self, titles):
        self.answer = "<solution>\n" + "\n".join(titles) + "\n</solution>"


def _stub(titles, domain="games", name="Stub"):
    prompt = {} if domain == "movies" else {"domain": domain}
    return E.System(name, "llm", "stub", load=lambda: (_Answer(titles), None), prompt=prompt, group="zero-shot")


# ---------------------------------------------------------------------------------------------
# systems and prompts


def test_results_label():
    assert E.results_label() == "main" and E.results_label("main", "movies") == "main"
    assert E.results_label("main", "games") == "games_main"
    assert E.results_label("ablations", "games") == "games_ablations"
    assert E.baselines_label() == "baselines_full" and E.baselines_label("games") == "games_baselines_full"
    assert "results_label" in E.__all__


def test_zero_shot_game_prompts_and_unchanged_movie_system(game_rows):
    movie = E.zero_shot_system("tiny-smollm2")
    game = E.zero_shot_system("tiny-smollm2", domain="games")
    assert movie.prompt == {} and movie.key() == {"name": movie.name, "kind": "llm", "ref": "model:tiny-smollm2",
                                                  "prompt": {}}
    assert game.prompt == {"domain": "games"} and game.ref == movie.ref and game.name == movie.name
    assert E.llm_domain(game) == "games" and E.llm_domain(movie) == "movies"
    text = _system_text(game, game_rows)
    assert "video game" in text and "movie" not in text.lower() and "film" not in text.lower()
    assert "movie" in _system_text(movie, game_rows)
    last = game.prompts(game_rows)[0][-1]["content"]
    assert last.endswith("Now recommend exactly 10 video games for me, in the answer format.")
    with pytest.raises(ValueError, match="domain"):
        E.zero_shot_system("tiny-smollm2", domain="books")


def test_evidence_system_keeps_the_game_prompt(games_world, game_rows):
    from safecrs_core.train.prompts import EvidencePrompts

    cat, orc = games_world
    top = cat.items["popularity"].sort_values(ascending=False, kind="stable").index.tolist()[:10]
    ev = EvidencePrompts(lambda rows, n: [top[:n]] * len(rows), "fixed", cat, orc, n=10)
    system = E.evidence_system(E.zero_shot_system("tiny-smollm2", domain="games"), ev)
    assert system.prompt == {"domain": "games"} and system.key()["prompt"] == {"domain": "games"}
    text = _system_text(system, game_rows)
    assert "candidate video games" in text and cat.display(top[0]) in text


def test_trained_systems_prompt_in_the_stage_domain(artifacts_root):
    games = _fake_stage(artifacts_root, "gdpo", "aaaa", {"mode": "gdpo", "domain": "games"}, ["rows:1"],
                        "2026-01-01T00:00:00")
    movies = _fake_stage(artifacts_root, "gdpo", "bbbb", {"mode": "gdpo", "domain": "movies"}, ["rows:1"],
                         "2026-01-01T00:00:00")
    sft = _fake_stage(artifacts_root, "sft", "cccc", {"variant": "safe"}, ["rows:1"], "2026-01-01T00:00:00")
    found = lambda stage, **kw: E.trained_systems({}, stages=[stage], log=None, **kw)[0]  # noqa: E731
    assert found(games).prompt == {"domain": "games"}  # the stage's own domain
    assert found(movies).prompt == {} and found(movies).key()["prompt"] == {}
    assert found(sft).prompt == {}  # no domain parameter: movies
    assert found(sft, domain="games").prompt == {"domain": "games"}
    with pytest.raises(ValueError, match="games"):
        found(games, domain="movies")
    stage = E.stage_system("S", games, G.load_gdpo_model, domain="games", prompt={"system": "Be brief."})
    assert stage.prompt == {"system": "Be brief.", "domain": "games"}
    assert E.stage_system("S", games, G.load_gdpo_model, domain="movies").prompt == {}
    with pytest.raises(ValueError, match="prompt is for"):
        E.stage_system("S", games, G.load_gdpo_model, domain="movies", prompt={"domain": "games"})


def test_available_systems_for_games(games_world, games_bench, artifacts_root):
    cat, orc = games_world
    ds, _, bench = games_bench
    fp = rows_fingerprint(ds["train"])
    _fake_stage(artifacts_root, "gdpo", "dddd", {"mode": "gdpo", "domain": "games"}, ["sft/x", f"rows:{fp}"],
                "2026-01-01T00:00:00")
    systems = E.available_systems("smoke", ds, benchmark=bench, domain="games", evidence=True, n_popular=200,
                                  progress=False, log=None)
    llms = [s for s in systems if s.kind == "llm"]
    assert [s.name for s in llms] == ["Zero-shot SmolLM2-135M", "Zero-shot SmolLM2-135M + evidence", "Safe-GDPO"]
    assert all(s.prompt == {"domain": "games"} for s in llms)
    ev = llms[1].evidence
    assert ev.catalog.domain == "games" and ev.oracle.domain == "games"  # loaded for the domain
    refs = {s.name: s.ref for s in systems if s.kind == "baseline"}
    assert "domain=games" in refs["Retrieval"]
    # the domain follows the given catalog and oracle; movies by default, with an empty prompt
    inferred = E.available_systems("smoke", ds, catalog=cat, oracle=orc, baselines=False, trained=False, log=None)
    assert inferred[0].prompt == {"domain": "games"}
    default = E.available_systems("smoke", ds, baselines=False, trained=False, log=None)
    assert default[0].prompt == {} and default[0].key() == E.zero_shot_system().key()
    with pytest.raises(ValueError, match="catalog"):
        E.available_systems("smoke", ds, domain="movies", catalog=cat, baselines=False, trained=False, log=None)


# ---------------------------------------------------------------------------------------------
# generations, scores and results


def test_run_system_scores_a_game_llm_on_the_game_catalog(games_world, game_rows, artifacts_root, fake_generate):
    cat, orc = games_world
    row = game_rows[0]
    target, seen = row["targets"][0]["item_id"], row["seen"][0]["item_id"]
    assert cat.resolve(cat.display(target)).item_id == target
    stub = _stub([cat.display(target), cat.display(seen), "Not A Real Game (1999)"])
    s = E.run_system(stub, [row], progress=False, log=None)  # catalog and oracle: the prompt's domain
    assert s.loc[0, "ids"][0] == target and s.loc[0, "recall@10"] == pytest.approx(1 / len(row["targets"]))
    assert s.loc[0, "n_seen_removed"] == 1 and s.loc[0, "list_len"] == 2
    verdict = orc.check([target], row["trait"])[0][0]
    assert s.loc[0, "unknown@10"] == pytest.approx(((verdict == UNKNOWN) + 1) / 2)  # the unresolved title
    assert "video game" in fake_generate[0][0]["content"]  # generated from the game prompt
    # the generation stage is keyed by the game prompt; a movie system's key is as before
    (gen,) = (artifacts_root / "generations").iterdir()
    assert read_manifest(gen)["params"]["prompt"] == {"k": 10, "domain": "games"}
    movie_gen = E.generation_stage(_stub(["x"], domain="movies"), [row], progress=False, log=None)
    assert read_manifest(movie_gen)["params"]["prompt"] == {"k": 10}
    with pytest.raises(ValueError, match="catalog"):
        E.run_system(stub, [row], catalog=MOVIES, progress=False, log=None)
    with pytest.raises(ValueError, match="oracle"):
        E.run_system(stub, [row], domain="games", oracle=MOVIES, progress=False, log=None)


def test_results_stage_on_games_under_the_games_label(games_world, game_rows, artifacts_root, fake_generate):
    cat, orc = games_world
    top = cat.items["popularity"].sort_values(ascending=False, kind="stable").index.tolist()[:400]

    def known(rows, k):  # per row, popular unseen games with a verdict for the row's trait
        out = []
        for r in rows:
            seen = {x["item_id"] for x in r["seen"]}
            codes = orc.check(top, r["trait"])[0]
            out.append([i for i, c in zip(top, codes) if c != UNKNOWN and i not in seen][:k])
        return out
    baseline = E.System("Known", "baseline", "known-verdicts", recommend=known)
    target = game_rows[0]["targets"][0]["item_id"]
    systems = [baseline, _stub([cat.display(target)])]
    label = E.results_label("main", "games")
    stage = E.results_stage(systems, game_rows, profile="smoke", label=label, n_boot=20, progress=False, log=None)
    res = E.load_results(stage)
    base = res.per_sample[res.per_sample["system"] == "Known"]
    assert (base["unknown@10"] == 0).all() and (base["list_len"] == 10).all()  # judged by the game oracle
    lists = known(game_rows, 10)
    want = [float((orc.check(ids, r["trait"])[0] == UNSAFE).mean()) for ids, r in zip(lists, game_rows)]
    assert base["svr@10"].tolist() == pytest.approx(want)
    assert res.per_sample[res.per_sample["system"] == "Stub"]["ids"].iloc[0] == [target]
    assert E.find_results("smoke", label=label, root=artifacts_root) == stage
    with pytest.raises(FileNotFoundError):
        E.find_results("smoke", root=artifacts_root)  # the movie label is not written
    with pytest.raises(ValueError, match="prompt of"):
        E.results_stage([_stub(["x"]), _stub(["x"], domain="movies", name="Movie stub")], game_rows, log=None)


# ---------------------------------------------------------------------------------------------
# Safe-GDPO


def test_gdpo_params_domain():
    movies, games = G.GDPOParams().to_params(), G.GDPOParams(domain="games").to_params()
    assert movies["domain"] == "movies" and {k for k in movies if movies[k] != games[k]} == {"domain"}
    with pytest.raises(ValueError, match="domain"):
        G.GDPOParams(domain="books")
    with pytest.raises(ValueError, match="movies catalog"):
        G.train_gdpo(G.GDPOParams(domain="games"), "tiny-smollm2", [], catalog=MOVIES, log=None)


def test_train_gdpo_on_games_uses_the_game_catalog_and_oracle(games_world, games_bench, artifacts_root,
                                                              monkeypatch):
    cat, orc = games_world
    ds = games_bench[0]
    popular = cat.items["popularity"].sort_values(ascending=False, kind="stable").index.tolist()[:500]

    def unsafe_for(row):  # a popular game, unsafe for the row's trait, that its title resolves to
        taken = {x["item_id"] for x in row["targets"] + row["seen"]}
        return next((i for i, c in zip(popular, orc.check(popular, row["trait"])[0])
                     if c == UNSAFE and i not in taken and cat.resolve(cat.display(i)).item_id == i), None)
    row, unsafe = next((r, u) for r in ds["train"] if r["targets"] for u in [unsafe_for(r)] if u)
    target = row["targets"][0]["item_id"]
    rows = [dict(row, id=f"g{i}") for i in range(2)]
    completions = [f"<solution>\n{cat.display(target)}\n{cat.display(unsafe)}\n</solution>",
                   f"<solution>\n{cat.display(target)}\n</solution>"]
    built = {}
    real = G.build_trainer

    def build_trainer(params, model, tok, rows_, catalog, oracle, output_dir, **kw):
        trainer = real(params, model, tok, rows_, catalog, oracle, output_dir, **kw)
        ids = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions]
        trainer._generate_single_turn = lambda prompt_ids, *a, **k: ([ids[i % 2] for i in range(len(prompt_ids))],
                                                                     None)
        built["trainer"] = trainer
        return trainer
    monkeypatch.setattr(G, "build_trainer", build_trainer)

    params = G.GDPOParams(domain="games", k=2, num_generations=2, per_device_train_batch_size=2, max_steps=1,
                          max_completion_length=64, lora=True, lora_r=2, save_steps=1)
    path = G.train_gdpo(params, "tiny-smollm2", rows, log=None)  # catalog and oracle: the params' domain
    trainer = built["trainer"]
    assert trainer.rank_rewards.oracle.domain == "games" and trainer.rank_rewards.catalog.domain == "games"
    system = trainer.train_dataset[0]["prompt"][0]["content"]
    assert "video game" in system and "movie" not in system.lower()
    log = json.loads((path / "log_history.json").read_text())[0]
    assert log["rank_rewards/hits_mean"] == 1.0 and log["rank_rewards/unsafe_items"] == 1  # game titles resolved
    assert read_manifest(path)["params"]["domain"] == "games"
    # evaluation finds the stage by its training rows and prompts it with games
    found = E.trained_systems({"train": rows}, log=None)
    assert [(s.name, s.prompt) for s in found] == [("Safe-GDPO (from the base model)", {"domain": "games"})]
