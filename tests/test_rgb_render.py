"""Synthetic RGB renders: projection, mask and depth against an independent open3d cast, handedness, shards."""
import os

import numpy as np
import open3d as o3d
import pytest

from data_prep.synth import hands, poses
from data_prep.synth import render as depth_render
from data_prep.synth_rgb import appearance, dataset, raster
from hsr_tf.data import rgb_shards

FACES = np.asarray(hands.FACES)


@pytest.fixture(scope="module")
def posed():
    subj = hands.make_subjects(1, 0)[0]
    lib = poses.pose_library(3, 0)
    theta = subj.theta_for(lib)
    verts, joints = subj.pose(theta[0])  # 'open' gesture
    look = appearance.subject_look(subj.rest_vertices, subj.rest_joints, FACES, np.random.default_rng(1))
    return verts, joints, look


def _render(posed, seed=3, **kw):
    verts, joints, look = posed
    cfg = raster.RGBFrameConfig(image_size=kw.pop("image_size", 96), **kw)
    rec, reason = raster.render_rgb_frame(verts, joints, FACES, look, cfg, np.random.default_rng(seed))
    assert reason is None
    return rec, cfg


def _independent_cast(vertices, camera, u, v):
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(FACES.astype(np.uint32)))
    fx, fy, cx, cy = camera.astype(np.float64)
    d = np.stack([(u - cx) / fx, (cy - v) / fy, np.ones_like(u)], -1)
    rays = np.concatenate([np.zeros_like(d), d], -1).reshape(-1, 6).astype(np.float32)
    return scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().reshape(u.shape)


@pytest.mark.parametrize("seed", [3, 11])
def test_uv_mask_depth_match_independent_cast(posed, seed):
    rec, cfg = _render(posed, seed)
    s = cfg.image_size
    uv = rgb_shards.project(rec["joints"], rec["camera"])
    np.testing.assert_allclose(rec["joints_uv"], uv, atol=0.01)
    assert np.all((uv > 0) & (uv < s - 1))  # joints inside the crop (margin)
    # centre rays: depth > 0 exactly where the mesh is hit, and equals the cast depth (mm, rounded)
    vv, uu = np.mgrid[0:s, 0:s].astype(np.float64)
    t = _independent_cast(rec["vertices"].astype(np.float64), rec["camera"], uu, vv)
    hit = np.isfinite(t)
    assert hit.sum() > 500
    np.testing.assert_array_equal(rec["depth"] > 0, hit)
    assert np.abs(rec["depth"][hit].astype(np.float64) - t[hit]).max() <= 0.5 + 1e-3
    assert np.all(rec["mask"][hit] > 0)
    # coverage: fraction of the 3 x 3 sub-pixel rays that hit, cast independently everywhere
    k = cfg.supersample
    offs = (np.arange(k) - (k - 1) / 2) / k
    su = (np.arange(s)[:, None] + offs[None]).reshape(-1)
    sv, suu = np.meshgrid(su, su, indexing="ij")
    ts = _independent_cast(rec["vertices"].astype(np.float64), rec["camera"], suu, sv)
    cov = np.isfinite(ts).reshape(s, k, s, k).mean(axis=(1, 3))
    want = np.round(cov * 255).astype(np.int32)
    diff = np.abs(rec["mask"].astype(np.int32) - want)
    # the renderer supersamples only where centre rays change; a sub-pixel gap between touching fingers
    # can hide from it, so allow a handful of pixels (0.5 % of the hand), none with mask 0 where hit
    assert (diff > 0).sum() <= max(3, 0.005 * hit.sum())
    assert np.all(rec["mask"][cov == 0] == 0)
    assert ((rec["mask"] > 0) & (rec["mask"] < 255)).sum() > 50  # anti-aliased edges exist
    # premultiplied: colour never exceeds coverage, black outside the hand
    assert np.all(rec["image"].max(axis=-1).astype(int) <= rec["mask"].astype(int) + 1)
    assert np.all(rec["image"][rec["mask"] == 0] == 0)
    assert rec["bone_scale"] == pytest.approx(np.linalg.norm(rec["joints"][9] - rec["joints"][10]), abs=1e-3)
    assert rec["root_depth"] == pytest.approx(rec["joints"][0, 2], abs=1e-3)


def test_not_mirrored_palm_view(posed):
    # palm facing the camera, fingers up, no roll: a right hand shows its thumb on the image's right
    view = depth_render.ViewConfig(cone_deg=0.0, back_prob=0.0, inplane_deg=0.0)
    rec, cfg = _render(posed, view=view, image_size=128)
    uv = rec["joints_uv"]
    assert uv[4, 0] > uv[20, 0] + 20  # thumb tip right of the pinky tip
    assert uv[12, 1] < uv[0, 1] - 20  # middle tip above the wrist
    for j in (3, 4, 19, 20):  # the hand is where its joints project, not at the mirrored place
        u, v = np.round(uv[j]).astype(int)
        assert rec["mask"][v, u] == 255, j
    # every vertex projects into the silhouette; a mirrored image would miss many of them
    vuv = np.round(rgb_shards.project(rec["vertices"], rec["camera"])).astype(int)
    inside = rec["mask"][vuv[:, 1], vuv[:, 0]] > 0
    flipped = rec["mask"][:, ::-1][vuv[:, 1], vuv[:, 0]] > 0
    assert inside.mean() > 0.95 and flipped.mean() < inside.mean() - 0.2, (inside.mean(), flipped.mean())
    u, v = np.round(uv[3]).astype(int)
    assert rec["image"][v, u].sum() > 0


def test_shifted_domain_flags_and_appearance(posed):
    rec, _ = _render(posed, skin_tones=(4,), lighting=(5,))
    assert rec["skin_tone"] == 4 and rec["lighting"] == 5
    dark = rec["image"][rec["mask"] == 255].mean()
    light, _ = _render(posed, skin_tones=(0,), lighting=(5,))
    assert light["image"][light["mask"] == 255].mean() > dark + 30  # tone 0 is lighter than tone 4
    noisy, _ = _render(posed, depth_noise="kinect")
    clean, _ = _render(posed)
    both = (noisy["depth"] > 0) & (clean["depth"] > 0)
    assert both.sum() > 500 and np.any(noisy["depth"][both] != clean["depth"][both])
    assert (noisy["depth"] > 0).sum() < (clean["depth"] > 0).sum()  # dropouts
    with pytest.raises(ValueError, match="skin_tones"):
        raster.RGBFrameConfig(skin_tones=(5,))
    assert appearance.parse_index_list("0-2,7", 40, "--lighting") == [0, 1, 2, 7]
    with pytest.raises(ValueError, match="--lighting"):
        appearance.parse_index_list("0-45", 40, "--lighting")
    assert appearance.NUM_SKIN_TONES >= 5 and appearance.NUM_LIGHTING >= 30


def test_generate_shards_resume_and_same_viewpoints_as_depth_set(tmp_path):
    cfg = dataset.RGBDatasetConfig(num_subjects=2, poses_per_subject=2, views_per_pose=1, frames_per_shard=2,
                                   test_fraction=0.5, frame=raster.RGBFrameConfig(image_size=32))
    out = str(tmp_path / "rgb")
    summary = dataset.generate(out, cfg, num_workers=1, progress=False, log=lambda *_: None)
    assert summary["written"] == 4
    files = rgb_shards.list_rgb_shards(out, "train") + rgb_shards.list_rgb_shards(out, "test")
    assert len(files) == 2
    arrays, attrs = rgb_shards.read_rgb_shard(files[0])
    assert attrs["dataset"] == "synth_rgb" and attrs["image_size"] == 32 and arrays["image"].shape[1:] == (32, 32, 3)
    # the viewpoint of each frame is the depth set's frame with the same (seed, frame id)
    st = dataset._state(cfg)
    for i, fid in enumerate(arrays["frame_index"]):
        s, p = int(arrays["subject"][i]), int(arrays["pose"][i])
        verts, _ = st["subjects"][s].pose(dataset._theta(st, s, p))
        placed = depth_render.sample_placement(verts, cfg.frame.camera, cfg.frame.view,
                                               np.random.default_rng([cfg.seed, int(fid)]))
        np.testing.assert_allclose(arrays["vertices"][i], placed[2], atol=1e-3)
    mtime = os.path.getmtime(files[0])
    again = dataset.generate(out, cfg, num_workers=1, progress=False, log=lambda *_: None)
    assert again["frames"] == 0 and os.path.getmtime(files[0]) == mtime
    other = dataset.RGBDatasetConfig(num_subjects=2, poses_per_subject=2, views_per_pose=1, frames_per_shard=2,
                                     test_fraction=0.5, seed=1, frame=raster.RGBFrameConfig(image_size=32))
    with pytest.raises(ValueError, match="manifest.json"):
        dataset.generate(out, other, num_workers=1, progress=False, log=lambda *_: None)
