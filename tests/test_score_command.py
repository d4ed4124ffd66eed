"""`vgpa score`: the scored groups file the trainer reads, resume after an interrupt, recorded
failures, bad input files, and two processes writing the file one process writes."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vgpa import cli, score_command, scoring
from vgpa.geometry import Geometry, load_geometry
from vgpa.video import read_video

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
    assert list(meta) == ["groups"] and all("consistency_score" in v for v in meta["groups"][0]["videos"])
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
    with pytest.raises(SystemExit, match="--points point_map needs a point map, which Depth Anything 3"):
        cli.main(["score", str(groups_file), "--geometry", "da3", "--points", "point_map", "--out",
                  str(tmp_path / "da3.json")])


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

    with pytest.raises(SystemExit, match="must include \\['3dcs'\\]"):
        _score(dataset, tmp_path / "m.json", "--metrics", "mvcs,motion")
    with pytest.raises(SystemExit, match="unknown metric"):
        _score(dataset, tmp_path / "m.json", "--metrics", "3dcs,motion,sharpness")
    with pytest.raises(SystemExit, match="not a folder"):
        cli.main(["score", str(dataset), "--geometry", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.json")])
    with pytest.raises(SystemExit, match="--num-frames must be >= 2"):
        _score(dataset, tmp_path / "m.json", "--num-frames", 1)


@pytest.mark.parametrize("model", ["vggt", "da3"])
def test_geometry_models_need_their_package_and_a_local_checkpoint(dataset, tmp_path, model):
    module = score_command.PROVIDERS[model][0]
    if importlib.util.find_spec(module) is None:
        with pytest.raises(SystemExit, match=f"needs the {module} package .*install it with `pip install"):
            cli.main(["score", str(dataset), "--geometry", model, "--out", str(tmp_path / "o.json")])
    else:  # installed: a checkpoint must be named and exist
        with pytest.raises(SystemExit, match="needs --model-path"):
            cli.main(["score", str(dataset), "--geometry", model, "--out", str(tmp_path / "o.json")])
        with pytest.raises(SystemExit, match="does not exist"):
            cli.main(["score", str(dataset), "--geometry", model, "--model-path", str(tmp_path / "none"),
                      "--out", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["score", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--geometry", "--out", "--num-frames", "--size", "--conf-threshold", "--metrics", "--min-gap",
                 "--batch-size", "--device", "--model-path", "--points", "--conf-ties"):
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
