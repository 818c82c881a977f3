"""A small hand-made HandModel for tests (no asset needed): 21-joint hand skeleton, a few vertices
per bone, skinning weights and pose blend shapes confined to each vertex's own finger.

Legend: V vertices, S shape parameters, J joints (21).
"""
import numpy as np

from hsr_tf.hand_model.model import HandModel
from hsr_tf.hand_model.skeleton import FINGER_JOINTS, PARENTS

NUM_JOINTS = 21


def rest_joints_toy():
    """[J, 3] mm: wrist at the origin, fingers along +y, thumb towards +x."""
    joints = np.zeros((NUM_JOINTS, 3))
    xs = [30.0, 20.0, 0.0, -18.0, -34.0]
    starts = [15.0, 80.0, 82.0, 78.0, 70.0]
    lengths = [[30, 30, 25], [40, 25, 20], [45, 28, 22], [42, 26, 21], [33, 20, 18]]
    for f in range(5):
        y = starts[f]
        x = xs[f] + (10.0 if f == 0 else 0.0)
        for k, jj in enumerate(FINGER_JOINTS[f]):
            joints[jj] = (x + (8.0 * k if f == 0 else 0.0), y, 0.0)
            if k < 3:
                y += lengths[f][k]
    return joints


def make_toy_model(rng, per_bone=3, num_betas=4, pose_scale=2.0):
    """Returns (HandModel, vertex_finger [V] (-1 palm, else finger 0..4), vertex_bone [V])."""
    joints = rest_joints_toy()
    verts, finger, bone = [], [], []
    # palm: around the wrist and finger roots, bone 0
    for k in range(8):
        verts.append(rng.uniform([-35, 0, -10], [35, 70, 10]))
        finger.append(-1)
        bone.append(0)
    for f in range(5):
        chain = FINGER_JOINTS[f]
        for k in range(3):  # bone of joint chain[k] spans chain[k] -> chain[k+1]
            a, b = joints[chain[k]], joints[chain[k + 1]]
            for _ in range(per_bone):
                t = rng.uniform(0.1, 0.9)
                verts.append(a + t * (b - a) + rng.normal(0, 4, 3))
                finger.append(f)
                bone.append(chain[k])
    verts = np.array(verts)
    finger = np.array(finger)
    bone = np.array(bone)
    v = len(verts)
    weights = np.zeros((v, NUM_JOINTS))
    for i in range(v):
        if finger[i] < 0:
            weights[i, 0] = 1.0
            continue
        cand = [bone[i], PARENTS[bone[i]]]
        w = rng.dirichlet(np.ones(len(cand)))
        weights[i, cand] = w
    # joint regressor: each joint from a few vertices of its own finger/palm, convex weights
    regressor = np.zeros((NUM_JOINTS, v))
    for jj in range(NUM_JOINTS):
        pool = np.flatnonzero(finger == -1) if jj == 0 else np.flatnonzero(finger == (jj - 1) // 4)
        pick = rng.choice(pool, size=min(3, len(pool)), replace=False)
        regressor[jj, pick] = rng.dirichlet(np.ones(len(pick)))
    pose_basis = np.zeros((9 * (NUM_JOINTS - 1), v, 3))
    for jj in range(1, NUM_JOINTS):
        f = (jj - 1) // 4
        mask = finger == f
        pose_basis[9 * (jj - 1):9 * jj, mask] = rng.normal(0, pose_scale, (9, mask.sum(), 3))
    shape_basis = rng.normal(0, 3.0, (num_betas, v, 3))
    faces = np.array([[0, 1, 2], [1, 2, 3]], dtype=np.int32)
    model = HandModel(mean_shape=verts, shape_basis=shape_basis, pose_basis=pose_basis,
                      joint_regressor=regressor, skinning_weights=weights, parents=PARENTS, faces=faces)
    return model, finger, bone
