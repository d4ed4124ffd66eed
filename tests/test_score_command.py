"""`vgpa score`: the scored groups file the trainer reads, resume after an interrupt, recorded
failures, bad input files, two processes writing the file one process writes, concurrent runs
on one output, the record of score options, and the output file's hygiene."""

import errno
import importlib.util
import io
import json
import locale
import multiprocessing
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from vgpa import cli, score_command, scoring
from vgpa.geometry import Geometry, load_geometry
from vgpa.video import read_video, write_video

from fifo_watchdog import fifo_watchdog

REPO = Path(__file__).resolve().parents[1]
FRAMES, SIZE = 5, 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 groups of 2 rigid and 2 wobbly synthetic videos (examples/score_demo.py) with their
    geometry files; returns the groups file. Read-only for the tests: each writes its own --out."""
    spec = importlib.util.spec_from_file_location("score_demo", REPO / "examples" / "score_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    seed = int(torch.randint(0, 10_000, ()).item())
    return demo.write_dataset(tmp_path_factory.mktemp("dataset"), groups=3, seed=seed, frames=FRAMES, size=SIZE)


def _score(groups_file, out, *extra):
    return cli.main(["score", str(groups_file), "--geometry", str(groups_file.parent / "geometry"), "--out", str(out),
                     "--num-frames", str(FRAMES), "--size", str(SIZE), "--no-progress", *map(str, extra)])


def _write_groups(folder, groups, name="groups.json"):
    path = folder / name
    path.write_text(json.dumps({"groups": groups}))
    return path


def _refusal(capsys, call):
    """(exit status, stderr) of a call that must end in SystemExit."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        call()
    return exit_info.value.code, capsys.readouterr().err


def _tiny_video(root, name, frames=FRAMES, seed=0):
    """A Motion-JPEG video of ``frames`` random frames of SIZE x SIZE under root/videos and a
    geometry file of FRAMES frames for it (a wall 3 m away, the camera sliding sideways); returns
    its groups-file entry."""
    generator = torch.Generator().manual_seed(seed)
    write_video(root / "videos" / f"{name}.avi",
                torch.randint(0, 256, (frames, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator))
    K = torch.tensor([[28.0, 0, SIZE / 2], [0, 28.0, SIZE / 2], [0, 0, 1]]).expand(FRAMES, 3, 3)
    E = torch.eye(4).repeat(FRAMES, 1, 1)
    E[:, 0, 3] = -0.05 * torch.arange(FRAMES)
    depth = 3 + 0.1 * torch.rand(FRAMES, SIZE, SIZE, generator=generator)
    Geometry(depth=depth, confidence=None, intrinsics=K, extrinsics=E).save(root / "geometry" / f"{name}.npz")
    return {"video_path": f"videos/{name}.avi"}


def _tiny_dataset(root, groups):
    """A groups file under ``root`` with {group_id: number of videos} tiny videos (_tiny_video)."""
    listing = [{"group_id": group_id, "prompt": f"prompt {group_id}",
                "videos": [_tiny_video(root, f"{group_id}_{v}", seed=v) for v in range(count)]}
               for group_id, count in groups.items()]
    return _write_groups(root, listing)


def _score_tiny(groups_file, out, *extra):
    """score_command.main on a _tiny_dataset (no CLI dispatch: callable from threads)."""
    return score_command.main([str(groups_file), "--geometry", str(groups_file.parent / "geometry"), "--out",
                               str(out), "--num-frames", str(FRAMES), "--size", str(SIZE), "--no-progress",
                               *map(str, extra)])


def _scored(meta):
    """{(group_id, video_path)} of the videos that hold a score."""
    return {(g["group_id"], v["video_path"]) for g in meta["groups"] for v in g["videos"]
            if isinstance(v.get("consistency_score"), float) and "error" not in v}


@pytest.fixture
def no_scoring(monkeypatch):
    """Fails the test when any group is scored: for refusals that must come before scoring."""
    def refuse(*args, **kwargs):
        raise AssertionError("a group was scored")

    monkeypatch.setattr(score_command, "score_group", refuse)


def test_output_is_the_trainers_meta_data(dataset, tmp_path, capsys):
    out = tmp_path / "meta_data.json"
    assert _score(dataset, out, "--min-gap", 0.004) == 0
    summary = capsys.readouterr().out
    assert "scored 12, skipped 0 (already scored), failed 0 of 12 videos in 3 groups" in summary
    meta = json.loads(out.read_text())
    source = json.loads(dataset.read_text())
    assert [g["group_id"] for g in meta["groups"]] == [g["group_id"] for g in source["groups"]]
    root = dataset.parent
    for group, original in zip(meta["groups"], source["groups"]):
        assert group["prompt"] == original["prompt"]
        # Every input field kept, the scores added; each equals score_videos on the same inputs.
        geometries = [load_geometry(root / "geometry" / f"{Path(v['video_path']).stem}.npz")
                      for v in original["videos"]]
        frames = [read_video(root / v["video_path"], FRAMES, size=SIZE) for v in original["videos"]]
        expected = scoring.score_videos(geometries, frames=frames)
        for video, before, scores in zip(group["videos"], original["videos"], expected):
            assert video == {**before, **scores}
            assert set(scores) >= {"consistency_score", "motion_norm", "mvcs", "normal_stability",
                                   "reprojection_abs_rel"}

    vt = pytest.importorskip("vgpa.training", reason="the trainer's reader needs the train extras")
    pairs = vt.load_videogpa_pairs(out, data_root=root, min_gap=0.004)
    chosen = [vt.select_videogpa_pair(g["videos"], min_gap=0.004) for g in meta["groups"]]
    assert [(p.winner, p.loser) for p in pairs] == [(root / w["latent_path"], root / l["latent_path"])
                                                    for w, l in filter(None, chosen)]
    assert f"pairs kept at min_gap 0.004 (motion >= 0.001): {len(pairs)} of 3 groups" in summary


def test_bare_list_and_paths_relative_to_the_input_file(dataset, tmp_path, monkeypatch, capsys):
    groups = json.loads(dataset.read_text())["groups"][:1]
    bare = dataset.parent / "bare_list.json"
    bare.write_text(json.dumps(groups))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # video paths resolve against the input's folder, not the working directory
    out = tmp_path / "bare_out.json"
    assert _score(bare, out) == 0
    meta = json.loads(out.read_text())
    assert list(meta) == ["score_options", "groups"]
    assert all("consistency_score" in v for v in meta["groups"][0]["videos"])
    assert "failed 0" in capsys.readouterr().out


def test_resume_after_an_interrupt_equals_an_uninterrupted_run(dataset, tmp_path, monkeypatch, capsys):
    full = tmp_path / "full.json"
    assert _score(dataset, full) == 0

    out = tmp_path / "interrupted.json"
    real = score_command.score_group
    calls = []

    def interrupted_after_one_group(*args, **kwargs):
        calls.append(args[0]["group_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(score_command, "score_group", interrupted_after_one_group)
    with pytest.raises(KeyboardInterrupt):
        _score(dataset, out)
    monkeypatch.setattr(score_command, "score_group", real)
    partial = json.loads(out.read_text())  # a complete file: the first group scored, the rest not yet
    first, *rest = partial["groups"]
    assert all("consistency_score" in v for v in first["videos"])
    assert all("consistency_score" not in v and "error" not in v for g in rest for v in g["videos"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    capsys.readouterr()

    assert _score(dataset, out) == 0
    assert "scored 8, skipped 4 (already scored), failed 0" in capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(full.read_text())
    # A complete output: a rerun scores nothing.
    assert _score(dataset, out) == 0
    assert "scored 0, skipped 12 (already scored), failed 0" in capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(full.read_text())


def _failing_group(root):
    """A group of one good video and five that cannot be scored, each for its own reason."""
    good = json.loads((root / "groups.json").read_text())["groups"][0]["videos"][0]
    stem = Path(good["video_path"]).stem
    geometry = load_geometry(root / "geometry" / f"{stem}.npz")
    video = root / good["video_path"]
    (root / "broken").mkdir(exist_ok=True)
    for name in ("no_geometry", "short_geometry", "corrupt", "no_depth"):
        shutil.copy(video, root / "broken" / f"{name}.mp4")
    (root / "broken" / "corrupt.mp4").write_bytes(b"not a video at all" * 10)
    Geometry(geometry.depth[:-1], None, geometry.intrinsics[:-1], geometry.extrinsics[:-1]).save(
        root / "geometry" / "short_geometry.npz")
    Geometry(torch.zeros_like(geometry.depth), None, geometry.intrinsics, geometry.extrinsics).save(
        root / "geometry" / "no_depth.npz")
    shutil.copy(root / "geometry" / f"{stem}.npz", root / "geometry" / "corrupt.npz")
    shutil.copy(root / "geometry" / f"{stem}.npz", root / "geometry" / "missing_video.npz")
    videos = [dict(good)] + [{"video_path": f"broken/{name}.mp4", "note": name} for name in
                             ("missing_video", "no_geometry", "short_geometry", "corrupt", "no_depth")]
    return {"group_id": "mixed", "prompt": "failures", "videos": videos}


def test_failing_videos_are_recorded_and_the_run_goes_on(dataset, tmp_path, capsys):
    root = dataset.parent
    groups = [_failing_group(root)] + json.loads(dataset.read_text())["groups"][1:2]
    groups_file = _write_groups(root, groups, "with_failures.json")
    out = tmp_path / "meta_data.json"
    assert _score(groups_file, out) == 0
    summary = capsys.readouterr().out
    assert "scored 5, skipped 0 (already scored), failed 5 of 10 videos in 2 groups" in summary
    videos = {Path(v["video_path"]).stem: v for g in json.loads(out.read_text())["groups"] for v in g["videos"]}
    reasons = {
        "missing_video": "no such file",
        "no_geometry": "no geometry file",
        "short_geometry": f"the geometry has {FRAMES - 1} frames but {FRAMES} were read from the video",
        "corrupt": "cannot read video",
        "no_depth": "not ranked: consistency_score undefined",
    }
    for name, reason in reasons.items():
        video = videos[name]
        assert reason in video["error"], (name, video["error"])
        if name == "no_depth":  # scored: the undefined scores are recorded as null, the motion as it is
            undefined = ["3dcs", "consistency_score", "mvcs", "normal_stability", "reprojection_abs_rel"]
            assert f"undefined score(s) {undefined}" in video["error"]
            assert all(video[key] is None for key in undefined) and video["motion_norm"] > 0
        else:
            assert not set(video) & set(score_command.SCORE_FIELDS), name  # no score at all
        assert video["note"] == name  # the input entry is kept
        assert f"{name}.mp4: " in summary
    scored = [v for v in videos.values() if "error" not in v]
    assert len(scored) == 5 and all("consistency_score" in v for v in scored)

    # Failures are retried on the next run: one fixed, the others fail again.
    shutil.copy(root / "geometry" / "missing_video.npz", root / "geometry" / "no_geometry.npz")
    assert _score(groups_file, out) == 0
    assert "scored 1, skipped 5 (already scored), failed 4" in capsys.readouterr().out
    fixed = next(v for g in json.loads(out.read_text())["groups"] for v in g["videos"]
                 if v["video_path"] == "broken/no_geometry.mp4")
    assert "error" not in fixed and "consistency_score" in fixed


def _undefined_group(root):
    """Two good videos, one whose geometry has no valid depth and dark frames (an empty render
    matches them best), and one whose cameras jump 100 units a frame (no frame pair overlaps:
    MVCS, normal stability and reprojection are undefined, 3DCS is not)."""
    good = json.loads((root / "groups.json").read_text())["groups"][0]["videos"]
    stem = Path(good[0]["video_path"]).stem
    geometry = load_geometry(root / "geometry" / f"{stem}.npz")
    (root / "undefined").mkdir(exist_ok=True)
    for name in ("dark", "apart"):
        shutil.copy(root / good[0]["video_path"], root / "undefined" / f"{name}.mp4")
    frames = read_video(root / good[0]["video_path"], FRAMES, size=SIZE)
    Geometry(torch.full_like(geometry.depth, float("nan")), None, geometry.intrinsics, geometry.extrinsics,
             frames=torch.zeros_like(frames)).save(root / "geometry" / "dark.npz")
    apart = geometry.extrinsics.clone()
    apart[:, 0, 3] += 100.0 * torch.arange(FRAMES)
    Geometry(geometry.depth, None, geometry.intrinsics, apart).save(root / "geometry" / "apart.npz")
    videos = [dict(video) for video in good[:2]] + [{"video_path": f"undefined/{name}.mp4"}
                                                    for name in ("dark", "apart")]
    return {"group_id": "undefined", "prompt": "undefined scores", "videos": videos}


def test_undefined_scores_fail_only_their_metrics(dataset, tmp_path, capsys):
    """A video without usable geometry is recorded with a null 3DCS and never ranked (it used
    to score about 0 on dark frames and win with --metrics 3dcs,motion); a video whose MVCS
    alone is undefined keeps its 3DCS and is ranked, as VideoGPA ranks it."""
    root = dataset.parent
    groups_file = _write_groups(root, [_undefined_group(root)], "undefined.json")
    vt = pytest.importorskip("vgpa.training", reason="the trainer's pair selection needs the train extras")
    for metrics in ("3dcs,motion", ",".join(scoring.DEFAULT_METRICS)):
        out = tmp_path / f"{len(metrics)}.json"
        assert _score(groups_file, out, "--metrics", metrics) == 0
        assert "scored 3, skipped 0 (already scored), failed 1 of 4 videos" in capsys.readouterr().out
        text = out.read_text()
        assert "NaN" not in text  # undefined is null, never a bare NaN token
        videos = {Path(v["video_path"]).stem: v for v in json.loads(text)["groups"][0]["videos"]}
        dark, apart = videos.pop("dark"), videos.pop("apart")
        assert dark["consistency_score"] is None and dark["3dcs"] is None and dark["motion_norm"] > 0
        assert "not ranked: consistency_score undefined" in dark["error"]
        assert "error" not in apart and apart["consistency_score"] > 0 and apart["motion_norm"] > 0
        if metrics != "3dcs,motion":
            assert apart["mvcs"] is None and apart["normal_stability"] is None
            assert apart["reprojection_abs_rel"] is None
            assert all(v["mvcs"] > 0 for v in videos.values())
        winner, loser = vt.select_videogpa_pair(json.loads(text)["groups"][0]["videos"], min_gap=0.0)
        assert winner["video_path"] != "undefined/dark.mp4" and loser["video_path"] != "undefined/dark.mp4"
        ranked = [v["consistency_score"] for v in (*videos.values(), apart)]
        assert winner["consistency_score"] == min(ranked) and loser["consistency_score"] == max(ranked)
    # A resume keeps the video whose MVCS is undefined, and scores the unranked one again.
    assert _score(groups_file, out) == 0
    assert "scored 0, skipped 3 (already scored), failed 1 of 4 videos" in capsys.readouterr().out


def test_videogpa_point_and_tie_options_reach_the_scores(dataset, tmp_path, capsys):
    """--points point_map and --conf-ties all score as score_videos with those options; a video
    whose geometry has no point map fails alone, naming the option."""
    root = dataset.parent
    good = json.loads((root / "groups.json").read_text())["groups"][1]["videos"]
    (root / "with_map").mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(9)
    for position, video in enumerate(good[:3]):
        geometry = load_geometry(root / "geometry" / f"{Path(video['video_path']).stem}.npz")
        shutil.copy(root / video["video_path"], root / "with_map" / f"map_{position}.mp4")
        confidence = (1 + torch.rand(geometry.depth.shape, generator=generator)).to(torch.bfloat16)  # ties
        point_map = None if position == 2 else geometry.world_points() + 0.01 * torch.randn(
            geometry.depth.shape + (3,), generator=generator)
        Geometry(geometry.depth, confidence, geometry.intrinsics, geometry.extrinsics, geometry.frames,
                 point_map=point_map).save(root / "geometry" / f"map_{position}.npz")
    videos = [{"video_path": f"with_map/map_{position}.mp4"} for position in range(3)]
    groups_file = _write_groups(root, [{"group_id": "maps", "videos": videos}], "maps.json")
    out = tmp_path / "maps.json"
    assert _score(groups_file, out, "--points", "point_map", "--conf-ties", "all", "--conf-threshold", 30) == 0
    assert "scored 2, skipped 0 (already scored), failed 1" in capsys.readouterr().out
    written = json.loads(out.read_text())["groups"][0]["videos"]
    assert "points='point_map' builds 3DCS from the record's point map" in written[2]["error"]
    geometries = [load_geometry(root / "geometry" / f"map_{position}.npz") for position in range(2)]
    frames = [read_video(root / v["video_path"], FRAMES, size=SIZE) for v in videos[:2]]
    expected = scoring.score_videos(geometries, frames=frames, conf_threshold=30, points="point_map", conf_ties="all")
    assert [{k: v[k] for k in e} for v, e in zip(written, expected)] == expected
    default = scoring.score_videos(geometries, frames=frames, conf_threshold=30)
    assert all(d["3dcs"] != e["3dcs"] for d, e in zip(default, expected))
    code, err = _refusal(capsys, lambda: cli.main(["score", str(groups_file), "--geometry", "da3", "--points",
                                                  "point_map", "--out", str(tmp_path / "da3.json")]))
    assert code == 2 and "--points point_map needs a point map, which Depth Anything 3" in err


def test_bad_input_files_are_refused_with_the_reason(dataset, tmp_path, capsys):
    root = dataset.parent
    good = json.loads(dataset.read_text())["groups"]
    cases = {
        "no_videos": ([{"group_id": "g", "prompt": "p", "videos": []}], "group 'g' has no videos"),
        "no_path": ([{"group_id": "g", "videos": [{"latent_path": "x.pt"}]}], "group 'g' video 0 has no 'video_path'"),
        "no_id": ([{"videos": good[0]["videos"]}], "group 0 needs a 'group_id'"),
        "twice": ([good[0], good[0]], f"group_id {good[0]['group_id']!r} appears twice"),
        "same_video": ([{"group_id": "g", "videos": [good[0]["videos"][0]] * 2}], "appears twice in the group"),
        "same_stem": ([{"group_id": "g", "videos": [{"video_path": "videos/a/clip.mp4"},
                                                     {"video_path": "videos/b/clip.mp4"}]}],
                      "both map to the geometry file"),
        "not_groups": ({"videos": []}, "expected VideoGPA's groups format"),
    }
    for name, (content, message) in cases.items():
        path = root / f"bad_{name}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(SystemExit) as exit_info:
            _score(path, tmp_path / f"{name}_out.json")
        assert exit_info.value.code == 2, name
        assert message in capsys.readouterr().err, name
        assert not (tmp_path / f"{name}_out.json").exists()

    (root / "bad_json.json").write_text("{not json")
    with pytest.raises(SystemExit):
        _score(root / "bad_json.json", tmp_path / "x.json")
    assert "not valid JSON" in capsys.readouterr().err

    # An --out that holds the results of another dataset is never overwritten.
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"groups": [{"group_id": "other", "videos": [{"video_path": "o.mp4"}]}]}))
    with pytest.raises(SystemExit):
        _score(dataset, foreign)
    assert "holds group(s) ['other'] that the input does not" in capsys.readouterr().err
    assert json.loads(foreign.read_text())["groups"][0]["group_id"] == "other"

    for call, message in [
        (lambda: _score(dataset, tmp_path / "m.json", "--metrics", "mvcs,motion"), "must include ['3dcs']"),
        (lambda: _score(dataset, tmp_path / "m.json", "--metrics", "3dcs,motion,sharpness"), "unknown metric"),
        (lambda: cli.main(["score", str(dataset), "--geometry", str(tmp_path / "nowhere"), "--out",
                           str(tmp_path / "m.json")]), "not a folder"),
        (lambda: _score(dataset, tmp_path / "m.json", "--num-frames", 1), "--num-frames must be >= 2"),
    ]:
        code, err = _refusal(capsys, call)
        assert code == 2 and err.startswith("vgpa score: ") and message in err, err
        assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("model", ["vggt", "da3"])
def test_geometry_models_need_their_package_and_a_local_checkpoint(dataset, tmp_path, model, capsys):
    module = score_command.PROVIDERS[model][0]
    command = ["score", str(dataset), "--geometry", model, "--out", str(tmp_path / "o.json")]
    if importlib.util.find_spec(module) is None:
        cases = [(command, f"needs the {module} package"), (command, "install it with `pip install")]
    else:  # installed: a checkpoint must be named and exist
        cases = [(command, "needs --model-path"),
                 (command + ["--model-path", str(tmp_path / "none")], "does not exist")]
    for argv, message in cases:
        code, err = _refusal(capsys, lambda: cli.main(argv))
        assert code == 2 and message in err, err
    assert not (tmp_path / "o.json").exists()


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["score", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--geometry", "--out", "--num-frames", "--size", "--conf-threshold", "--metrics", "--min-gap",
                 "--batch-size", "--device", "--model-path", "--accept-truncated", "--backend", "--points",
                 "--conf-ties"):
        assert flag in text, flag


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_file_one_process_writes(dataset, tmp_path):
    single = tmp_path / "single.json"
    assert _score(dataset, single) == 0
    out = tmp_path / "two.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "vgpa", "score", str(dataset), "--geometry", str(dataset.parent / "geometry"),
               "--out", str(out), "--num-frames", str(FRAMES), "--size", str(SIZE)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    # Both ranks scored (3 groups: rank 0 takes groups 0 and 2, rank 1 group 1); one summary, by rank 0.
    assert "scoring (rank 1)" in run.stderr
    assert run.stdout.count("scored 12, skipped 0 (already scored), failed 0") == 1
    assert json.loads(out.read_text()) == json.loads(single.read_text())


# --------------------------------------------------------------------------------------------
# Concurrent runs on one output


def test_two_runs_at_once_on_one_out_lose_no_group(tmp_path, monkeypatch, capsys):
    """Two runs on different datasets with the same --out, started together: the one that
    holds the output keeps every group, the other is refused naming it; a reader (every version
    of the file, in order) never sees a scored video disappear."""
    datasets = {"a": _tiny_dataset(tmp_path / "a", {"a0": 2, "a1": 2}),
                "b": _tiny_dataset(tmp_path / "b", {"b0": 2, "b1": 2})}
    out = tmp_path / "meta_data.json"
    real_group, real_write = score_command.score_group, score_command.write_atomically
    ended, guard, entered = threading.Event(), threading.Lock(), []

    def first_scorer_waits(*args, **kwargs):
        # The first run to score a group waits there, mid-run, until the other run has ended:
        # the two runs overlap whatever the scheduling.
        with guard:
            first = not entered
            entered.append(threading.get_ident())
        if first:
            ended.wait(timeout=120)  # a guard against a hang, not a timing check
        return real_group(*args, **kwargs)

    versions = []

    def recorded_write(path, content):
        with guard:
            real_write(path, content)
            versions.append(_scored(json.loads(out.read_text())))

    monkeypatch.setattr(score_command, "score_group", first_scorer_waits)
    monkeypatch.setattr(score_command, "write_atomically", recorded_write)
    codes = {}

    def run(name):
        try:
            codes[name] = _score_tiny(datasets[name], out)
        except SystemExit as exc:
            codes[name] = exc.code
        finally:
            ended.set()

    threads = [threading.Thread(target=run, args=(name,)) for name in datasets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    final = json.loads(out.read_text())
    for name, code in codes.items():  # a run that says it succeeded has all of its groups in the file
        if code == 0:
            source = json.loads(datasets[name].read_text())["groups"]
            assert _scored(final) >= {(g["group_id"], v["video_path"]) for g in source for v in g["videos"]}, name
    assert sorted(codes.values()) == [0, 2], codes
    err = capsys.readouterr().err
    assert f"is being written by another vgpa score (pid {os.getpid()} on host {socket.gethostname()}, since " in err
    assert all(later >= earlier for earlier, later in zip(versions, versions[1:])), versions
    assert not (tmp_path / "meta_data.json.lock").exists()  # the lock file goes with the run


def _hold_lock(out, input_path, ready, release):
    lock = score_command.OutputLock(out, input_path).acquire()
    ready.set()
    release.wait(60)
    lock.release()


def test_a_held_output_is_refused_naming_the_process_that_holds_it(tmp_path, capsys, monkeypatch):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    out = tmp_path / "meta_data.json"
    context = multiprocessing.get_context("fork")  # the child only takes the lock: no torch work after fork
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(out, Path("/data/other_groups.json"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with monkeypatch.context() as patch:
            patch.setattr(score_command, "score_group", None)  # nothing may be scored
            code, err = _refusal(capsys, lambda: _score_tiny(groups_file, out))
    finally:
        release.set()
        holder.join(60)
    assert code == 2
    assert err.startswith(f"vgpa score: --out {out} is being written by another vgpa score (pid {holder.pid} on host "
                          f"{socket.gethostname()}, since 20")
    assert "scoring /data/other_groups.json" in err and err.count("\n") == 1, err
    assert not out.exists()
    # Once the holder has ended, the output is free; its lock file is gone.
    assert not (tmp_path / "meta_data.json.lock").exists()
    assert _score_tiny(groups_file, out) == 0


# --------------------------------------------------------------------------------------------
# Videos that are not what their geometry was made from, or not files


def test_a_truncated_video_is_an_error_unless_the_caller_accepts_it(tmp_path, capsys):
    """A video that decodes fewer frames than its container reports: the frames sampled from what
    decodes are not the frames the geometry was made from, unless the caller says so."""
    groups_file = _tiny_dataset(tmp_path, {"g": 1})
    groups = json.loads(groups_file.read_text())["groups"]
    long_video = _tiny_video(tmp_path, "cut", frames=20)
    data = (tmp_path / long_video["video_path"]).read_bytes()
    (tmp_path / long_video["video_path"]).write_bytes(data[:len(data) * 6 // 10])
    groups[0]["videos"].append(long_video)
    groups_file = _write_groups(tmp_path, groups, "with_cut.json")

    out = tmp_path / "meta_data.json"
    assert _score_tiny(groups_file, out) == 0
    cut = json.loads(out.read_text())["groups"][0]["videos"][1]
    assert "20 frames reported but only" in cut["error"] and "--accept-truncated" in cut["error"], cut
    assert "consistency_score" not in cut
    assert "failed 1" in capsys.readouterr().out

    accepted = tmp_path / "accepted.json"
    with pytest.warns(UserWarning, match=r"cut\.avi: 20 frames reported but only"):
        assert _score_tiny(groups_file, accepted, "--accept-truncated") == 0
    cut = json.loads(accepted.read_text())["groups"][0]["videos"][1]
    assert "error" not in cut and isinstance(cut["consistency_score"], float)


def test_a_fifo_as_video_path_is_a_per_video_error_and_never_blocks(tmp_path, capsys):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    groups = json.loads(groups_file.read_text())["groups"]
    fifo = tmp_path / "videos" / "pipe.avi"
    os.mkfifo(fifo)
    shutil.copy(tmp_path / "geometry" / "g_0.npz", tmp_path / "geometry" / "pipe.npz")
    groups[0]["videos"].append({"video_path": "videos/pipe.avi"})
    groups_file = _write_groups(tmp_path, groups, "with_fifo.json")

    with fifo_watchdog(fifo) as opened:
        out = tmp_path / "meta_data.json"
        code = _score_tiny(groups_file, out)
    assert not opened, "the FIFO was opened"
    assert code == 0
    videos = json.loads(out.read_text())["groups"][0]["videos"]
    assert "it is a FIFO, not a regular file" in videos[2]["error"], videos[2]
    assert all(isinstance(v["consistency_score"], float) for v in videos[:2])


# --------------------------------------------------------------------------------------------
# The record of score options


def test_the_output_records_the_score_options(tmp_path, capsys):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    out = tmp_path / "meta_data.json"
    assert _score_tiny(groups_file, out, "--conf-threshold", 0, "--metrics", "3dcs,mvcs,motion") == 0
    assert json.loads(out.read_text())["score_options"] == {
        "metrics": ["3dcs", "mvcs", "motion"], "conf_threshold": 0.0, "num_frames": FRAMES, "size": SIZE,
        "geometry": "files", "accept_truncated": False, "points": "depth", "conf_ties": "first"}
    assert [option.key for option in score_command.SCORE_OPTIONS] == list(json.loads(out.read_text())["score_options"])


@pytest.mark.parametrize("change,message", [
    (("--conf-threshold", 50), "--conf-threshold 0.0 (this run: 50.0)"),
    (("--metrics", "3dcs,motion"), "--metrics 3dcs,mvcs,normal_stability,reprojection,motion (this run: 3dcs,motion)"),
    (("--num-frames", 4), f"--num-frames {FRAMES} (this run: 4)"),
    (("--size", 16), f"--size {SIZE} (this run: 16)"),
    (("--accept-truncated",), "--accept-truncated off (this run: on)"),
])
def test_resume_with_changed_score_options_is_refused_naming_the_option(tmp_path, capsys, monkeypatch, change,
                                                                        message):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    out = tmp_path / "meta_data.json"
    assert _score_tiny(groups_file, out) == 0
    before = out.read_bytes()
    monkeypatch.setattr(score_command, "score_group", None)  # nothing may be scored
    code, err = _refusal(capsys, lambda: _score_tiny(groups_file, out, *change))
    assert code == 2 and err.startswith(f"vgpa score: {out}: its scores were made with {message}"), err
    assert "score into a new --out" in err
    assert out.read_bytes() == before


def test_score_options_of_outputs_without_a_score_or_without_a_record(tmp_path, capsys, monkeypatch):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    out = tmp_path / "meta_data.json"
    # No score yet (e.g. interrupted before the first group): any options take it over.
    groups = json.loads(groups_file.read_text())["groups"]
    out.write_text(json.dumps({"score_options": {"conf_threshold": 90.0}, "groups": groups}))
    assert _score_tiny(groups_file, out) == 0
    meta = json.loads(out.read_text())
    assert meta["score_options"]["conf_threshold"] == 0.0 and len(_scored(meta)) == 2

    # Scores without a record (an older vgpa score): the options they were made with are unknown.
    del meta["score_options"]
    out.write_text(json.dumps(meta))
    code, err = _refusal(capsys, lambda: _score_tiny(groups_file, out))
    assert code == 2 and "holds scores but no record of the options" in err, err

    # An option added later is one more entry; outputs recorded before it compare with its `before`.
    meta = json.loads(out.read_text())
    meta["score_options"] = {option.key: option.read(score_command.build_parser().parse_args(
        [str(groups_file), "--geometry", "x", "--out", "x", "--num-frames", str(FRAMES), "--size", str(SIZE)]))
        for option in score_command.SCORE_OPTIONS}
    out.write_text(json.dumps(meta))
    extra = score_command.ScoreOption("--min-gap", "min_gap", lambda args: args.min_gap, before=0.05)
    monkeypatch.setattr(score_command, "SCORE_OPTIONS", score_command.SCORE_OPTIONS + (extra,))
    assert _score_tiny(groups_file, out, "--min-gap", 0.05) == 0
    assert json.loads(out.read_text())["score_options"]["min_gap"] == 0.05
    code, err = _refusal(capsys, lambda: _score_tiny(groups_file, out, "--min-gap", 0.1))
    assert code == 2 and "--min-gap 0.05 (this run: 0.1)" in err, err
    # A record holding an option this vgpa does not know is refused too.
    monkeypatch.setattr(score_command, "SCORE_OPTIONS", score_command.SCORE_OPTIONS[:-1])
    code, err = _refusal(capsys, lambda: _score_tiny(groups_file, out))
    assert code == 2 and "'min_gap' 0.05 (an option this vgpa does not know)" in err, err


# --------------------------------------------------------------------------------------------
# The output file's hygiene


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_the_output_file_mode_follows_the_umask(tmp_path, capsys, umask):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    previous = os.umask(umask)
    try:
        assert _score_tiny(groups_file, tmp_path / "meta_data.json") == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "meta_data.json").stat().st_mode) == 0o666 & ~umask


def test_what_a_killed_run_left_is_cleaned_up(tmp_path, capsys):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    out = tmp_path / "meta_data.json"
    leftovers = [tmp_path / ".meta_data.json.k1ll3d_x.tmp", tmp_path / ".meta_data.json.a8_b7c6d.tmp"]
    for path in leftovers:
        path.write_text('{"groups": [')
    (tmp_path / "meta_data.json.lock").write_text('{"pid": 1, "host": "gone"}')  # its process died: no lock held
    unrelated = [tmp_path / ".meta_data.json.notes", tmp_path / ".other.json.k1ll3d_x.tmp"]
    for path in unrelated:
        path.write_text("keep")
    assert _score_tiny(groups_file, out) == 0
    assert not any(path.exists() for path in leftovers)
    assert not (tmp_path / "meta_data.json.lock").exists()
    assert all(path.read_text() == "keep" for path in unrelated)


def _unwritable_folder(folder, monkeypatch):
    """Makes ``folder`` read-only. Root ignores mode bits, so there the kernel's refusal to
    create a file in it is stood in for (os.open of a new file in it fails with EACCES)."""
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.touch()
    except PermissionError:
        return
    probe.unlink()
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


def test_an_unwritable_out_is_refused_before_scoring(tmp_path, capsys, monkeypatch, no_scoring):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder").mkdir()
    cases = [(tmp_path / "a_folder", "is a folder"),
             (tmp_path / "a_file" / "meta_data.json", "cannot be made (a file is in the way)"),
             (tmp_path / "a_file" / "deeper" / "meta_data.json", "cannot be made (a file is in the way)")]
    for out, message in cases:
        code, err = _refusal(capsys, lambda: _score_tiny(groups_file, out))
        assert code == 2 and err.startswith(f"vgpa score: --out {out}") and message in err, err
        assert "Traceback" not in err and err.count("\n") == 1

    # A full disk: the lock file's note and the first write, before scoring, fail.
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "pwrite", full)
        patch.setattr(os, "fsync", full)
        code, err = _refusal(capsys, lambda: _score_tiny(groups_file, tmp_path / "full.json"))
    assert code == 2 and f"--out {tmp_path / 'full.json'} cannot be written (No space left on device)" in err, err
    assert not (tmp_path / "full.json").exists() and not list(tmp_path.glob(".full.json.*"))

    read_only = tmp_path / "read_only"
    with monkeypatch.context() as patch:
        _unwritable_folder(read_only, patch)
        code, err = _refusal(capsys, lambda: _score_tiny(groups_file, read_only / "meta_data.json"))
    read_only.chmod(0o755)
    assert code == 2 and "Permission denied" in err and f"--out {read_only / 'meta_data.json'}" in err, err
    assert list(read_only.iterdir()) == []


def test_a_resume_that_scores_nothing_leaves_the_file_alone(tmp_path, capsys, monkeypatch):
    groups_file = _tiny_dataset(tmp_path, {"g": 2, "h": 1})
    out = tmp_path / "meta_data.json"
    assert _score_tiny(groups_file, out) == 0
    before = out.stat()
    writes = []
    real_write = score_command.write_atomically
    monkeypatch.setattr(score_command, "write_atomically", lambda *args: writes.append(args) or real_write(*args))
    assert _score_tiny(groups_file, out) == 0
    assert "scored 0, skipped 3 (already scored), failed 0" in capsys.readouterr().out
    assert writes == []
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_in_the_groups_file_are_refused(tmp_path, capsys, token, no_scoring):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    text = groups_file.read_text().replace('"prompt": "prompt g"', f'"prompt": "prompt g", "weight": {token}')
    groups_file.write_text(text)
    code, err = _refusal(capsys, lambda: _score_tiny(groups_file, tmp_path / "meta_data.json"))
    assert code == 2 and f"{groups_file}: the " in err and token in err and "is not JSON" in err, err
    assert not (tmp_path / "meta_data.json").exists()


def test_undefined_scores_are_written_as_null(tmp_path):
    out = tmp_path / "meta_data.json"
    score_command.write_atomically(out, {"groups": [{"group_id": "g", "videos": [
        {"video_path": "a.mp4", "consistency_score": 0.5, "mvcs": float("nan"), "epipolar": float("inf")}]}]})
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    meta = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in the output"))
    assert meta["groups"][0]["videos"][0] == {"video_path": "a.mp4", "consistency_score": 0.5, "mvcs": None, "epipolar": None}


def test_every_video_failed_or_no_groups_is_not_a_success(tmp_path, capsys):
    groups = [{"group_id": "g", "videos": [{"video_path": "missing_a.mp4"}, {"video_path": "missing_b.mp4"}]}]
    (tmp_path / "geometry").mkdir()
    groups_file = _write_groups(tmp_path, groups)
    out = tmp_path / "meta_data.json"
    assert _score_tiny(groups_file, out) == 1
    captured = capsys.readouterr()
    assert "scored 0, skipped 0 (already scored), failed 2" in captured.out
    assert "vgpa score: every video failed" in captured.err
    assert all("error" in v for v in json.loads(out.read_text())["groups"][0]["videos"])  # the reasons are kept

    for content in ({"groups": []}, []):
        groups_file.write_text(json.dumps(content))
        code, err = _refusal(capsys, lambda: _score_tiny(groups_file, tmp_path / "empty.json"))
        assert code == 2 and "holds no groups" in err, err
        assert not (tmp_path / "empty.json").exists()


def test_an_invalid_backend_is_refused_before_scoring(tmp_path, capsys, monkeypatch, no_scoring):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    out = tmp_path / "meta_data.json"
    code, err = _refusal(capsys, lambda: _score_tiny(groups_file, out, "--backend", "nope"))
    assert code == 2 and "argument --backend: invalid choice: 'nope'" in err, err
    monkeypatch.setenv("VGPA_BACKEND", "nope")  # what --backend auto reads
    code, err = _refusal(capsys, lambda: _score_tiny(groups_file, out))
    assert code == 2 and "vgpa score: --backend auto on cpu: unknown backend in VGPA_BACKEND='nope'" in err, err
    assert not out.exists()


def test_the_groups_file_is_read_as_utf8_whatever_the_locale(tmp_path, capsys):
    groups_file = _tiny_dataset(tmp_path, {"g": 2})
    groups = json.loads(groups_file.read_text())["groups"]
    groups[0]["group_id"], groups[0]["prompt"] = "café", "un café à Zürich, 東京"
    groups_file.write_bytes(json.dumps({"groups": groups}, ensure_ascii=False).encode("utf-8"))
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        if locale.getencoding() == "utf-8":
            pytest.skip("Python runs in UTF-8 mode here: the locale does not pick the encoding")
        assert _score_tiny(groups_file, tmp_path / "meta_data.json") == 0
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    meta = json.loads((tmp_path / "meta_data.json").read_text(encoding="utf-8"))
    assert (meta["groups"][0]["group_id"], meta["groups"][0]["prompt"]) == ("café", "un café à Zürich, 東京")

    # The summary, on a stdout that cannot encode the group id, escapes it instead of failing.
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    score_command.say("failed: group 'café'", ascii_out)
    ascii_out.flush()
    assert ascii_out.buffer.getvalue() == b"failed: group 'caf\\xe9'\n"


def test_a_folder_as_input_says_what_the_command_expects(tmp_path, capsys, no_scoring):
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.avi", torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    code, err = _refusal(capsys, lambda: cli.main(["score", str(tmp_path / "videos"), "--geometry", str(tmp_path),
                                                   "--out", str(tmp_path / "meta_data.json")]))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"vgpa score: {tmp_path / 'videos'} is a folder; vgpa score takes a groups file, JSON like")


# --------------------------------------------------------------------------------------------
# The reading thread and the stage times


def test_the_next_group_is_read_while_one_is_scored(tmp_path, monkeypatch, capsys):
    """Group k + 1 is read while group k is scored (the reading thread), and never more than one
    group ahead (a bounded queue); the run ends with a time line of its stages."""
    groups_file = _tiny_dataset(tmp_path, {"a": 2, "b": 2, "c": 2, "d": 1})
    real_read, real_score = score_command.read_group, score_command.score_group
    events, lock, read_b = [], threading.Lock(), threading.Event()

    def read(group, *args, **kwargs):
        with lock:
            events.append(("read", group["group_id"]))
        result = real_read(group, *args, **kwargs)
        if group["group_id"] == "b":
            read_b.set()
        return result

    def score(group, *args, **kwargs):
        if group["group_id"] == "a":
            assert read_b.wait(timeout=60), "group b was not read while group a was scored"
        with lock:
            events.append(("score", group["group_id"]))
        return real_score(group, *args, **kwargs)

    monkeypatch.setattr(score_command, "read_group", read)
    monkeypatch.setattr(score_command, "score_group", score)
    assert _score_tiny(groups_file, tmp_path / "out.json") == 0
    order = [f"{kind} {group}" for kind, group in events]
    for ahead, behind in (("read c", "score a"), ("read d", "score b")):  # at most one group read ahead
        assert order.index(ahead) > order.index(behind), order
    assert len(_scored(json.loads((tmp_path / "out.json").read_text()))) == 7
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("time:"))
    assert re.match(r"time: [\d.]+ s for 7 videos scored \([\d.]+ videos/s\); score [\d.]+ s \(\d+%\), write ", line)
    assert "; reading: decode " in line and ", load " in line
    assert not [t for t in threading.enumerate() if t.name == "vgpa-score-reader"]


def test_an_error_of_the_reading_thread_stops_the_run_naming_the_group(tmp_path, monkeypatch, capsys):
    """An unexpected error while reading a group reaches the command, naming the group; the groups
    scored before it are in the output, and the thread is gone. (An unreadable video is not such
    an error: it is recorded in the output, naming its file.)"""
    groups_file = _tiny_dataset(tmp_path, {"a": 1, "b": 1, "c": 1})
    real_read = score_command.read_group

    def read(group, *args, **kwargs):
        if group["group_id"] == "b":
            raise MemoryError("no memory left for group b")
        return real_read(group, *args, **kwargs)

    monkeypatch.setattr(score_command, "read_group", read)
    with pytest.raises(RuntimeError, match=r"reading group 'b' failed: MemoryError: no memory left") as info:
        _score_tiny(groups_file, tmp_path / "out.json")
    assert isinstance(info.value.__cause__, MemoryError)
    assert _scored(json.loads((tmp_path / "out.json").read_text())) == {("a", "videos/a_0.avi")}
    assert not [t for t in threading.enumerate() if t.name == "vgpa-score-reader"]
    assert not (tmp_path / "out.json.lock").exists()
    capsys.readouterr()


def test_an_interrupted_run_stops_its_reading_thread(tmp_path, monkeypatch, capsys):
    groups_file = _tiny_dataset(tmp_path, {"a": 1, "b": 1, "c": 1})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(score_command, "score_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _score_tiny(groups_file, tmp_path / "out.json")
    assert not [t for t in threading.enumerate() if t.name == "vgpa-score-reader"]
    capsys.readouterr()


def test_wait_policy_hint_only_on_a_cpu_loaded_beyond_its_cores():
    cores = os.cpu_count()
    cpu = torch.device("cpu")
    hint = score_command.wait_policy_hint(cpu, load=cores + 0.5, environ={})
    assert hint is not None and "OMP_WAIT_POLICY=passive" in hint and f"{cores} cores" in hint
    assert score_command.wait_policy_hint(cpu, load=cores, environ={}) is None  # not beyond the cores
    assert score_command.wait_policy_hint(cpu, load=cores + 0.5, environ={"OMP_WAIT_POLICY": "active"}) is None
    assert score_command.wait_policy_hint(torch.device("cuda"), load=cores + 0.5, environ={}) is None


def test_score_prints_the_wait_policy_hint_on_a_loaded_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1000.0, 1000.0, 1000.0))
    groups_file = _tiny_dataset(tmp_path, {"a": 2})
    assert _score_tiny(groups_file, tmp_path / "scores.json") == 0
    assert "OMP_WAIT_POLICY=passive" in capsys.readouterr().err
