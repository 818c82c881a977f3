"""Learning the hand model from meshes (paper appendix): arrays in, arrays out.

Legend: N subjects, M posed samples, V vertices, S shape components, J joints,
P pose-blend features (9 (J - 1)), K candidate vertices per joint. Millimetres.

Steps, as in the appendix and section III-B:
  1. :func:`pca_shape_space` -- PCA over the subjects' neutral meshes gives B0 and B_1..S;
     :func:`project_betas` gives each subject's beta_s (projection onto the orthogonal basis).
  2. :func:`fit_joint_regressor` -- J_re, non-negative with rows summing to one, fitted to the
     subjects' rest joints (per-joint NNLS over the K vertices nearest the joint on the mean mesh).
  3. :func:`fit_skinning_and_blends` -- W and P by Adam on posed meshes (Eq. 9). The subject's
     neutral mesh T(beta_s, theta0) and rest joints J0(beta_s) are the subject's own exported ones
     ("can be both exported", appendix), so W and P are not biased by PCA truncation.
"""
import numpy as np
import keras
import scipy.optimize
import tensorflow as tf

from hsr_tf.hand_model.layer import ChainPlan, pose_and_skin


# ------------------------------------------------------------------ shape space
def pca_shape_space(rest_vertices, num_betas):
    """PCA of neutral meshes.

    Args:
      rest_vertices: [N, V, 3] neutral-pose meshes (mm), N > num_betas.
      num_betas: S, number of components kept.
    Returns:
      dict with ``mean`` [V, 3]; ``basis`` [S, V, 3] = sigma_n u_n (orthogonal directions u_n scaled by
      the subjects' standard deviation along them, so beta ~ unit variance); ``betas`` [N, S];
      ``explained`` [S] variance ratio per component; ``cumulative`` [S].
    """
    x = np.asarray(rest_vertices, np.float64)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"rest_vertices: expected [N, V, 3], found {x.shape}")
    n, v, _ = x.shape
    if not 0 < num_betas < n:
        raise ValueError(f"num_betas: expected 0 < S < N = {n}, found {num_betas}")
    flat = x.reshape(n, v * 3)
    mean = flat.mean(axis=0)
    _, sing, vt = np.linalg.svd(flat - mean, full_matrices=False)
    var = sing ** 2 / (n - 1)
    sigma = np.sqrt(var[:num_betas])
    # deterministic sign: largest-magnitude entry of each direction positive
    dirs = vt[:num_betas]
    signs = np.sign(dirs[np.arange(num_betas), np.abs(dirs).argmax(axis=1)])
    dirs = dirs * signs[:, None]
    basis = (dirs * sigma[:, None]).reshape(num_betas, v, 3)
    explained = var[:num_betas] / var.sum()
    result = {"mean": mean.reshape(v, 3), "basis": basis, "explained": explained,
              "cumulative": np.cumsum(explained)}
    result["betas"] = project_betas(x, result["mean"], basis)
    return result


def project_betas(rest_vertices, mean, basis):
    """Projects neutral meshes onto an orthogonal (not necessarily unit) basis.

    Args:
      rest_vertices: [N, V, 3]; mean: [V, 3]; basis: [S, V, 3] with mutually orthogonal rows.
    Returns:
      [N, S] betas minimising |x - mean - beta . basis|.
    """
    x = np.asarray(rest_vertices, np.float64)
    b = np.asarray(basis, np.float64).reshape(len(basis), -1)
    d = (x - mean).reshape(len(x), -1)
    return d @ b.T / np.sum(b * b, axis=1)


# ------------------------------------------------------------------ joint regressor
def fit_joint_regressor(rest_vertices, rest_joints, num_candidates=32, sum_weight=1e3):
    """Fits J_re [J, V] (non-negative rows summing to 1) to the subjects' rest joints.

    Per joint, the K = ``num_candidates`` vertices nearest to the joint on the mean mesh are the only
    ones allowed a weight; ``scipy.optimize.nnls`` solves
    ``min |A w - j|^2 + sum_weight^2 (1^T w - 1)^2`` with ``w >= 0`` over all subjects' x, y, z.
    Rows are renormalised to sum exactly to one afterwards (the penalty leaves < 1e-6).

    Args:
      rest_vertices: [N, V, 3] neutral meshes, mm; rest_joints: [N, J, 3] their joints, mm.
    Returns:
      [J, V] float64.
    """
    verts = np.asarray(rest_vertices, np.float64)
    joints = np.asarray(rest_joints, np.float64)
    if verts.ndim != 3 or joints.ndim != 3 or len(verts) != len(joints):
        raise ValueError(f"rest_vertices/rest_joints: expected [N, V, 3] and [N, J, 3], "
                         f"found {verts.shape} and {joints.shape}")
    n, v, _ = verts.shape
    num_joints = joints.shape[1]
    mean_v, mean_j = verts.mean(axis=0), joints.mean(axis=0)
    regressor = np.zeros((num_joints, v))
    for j in range(num_joints):
        cand = np.argsort(np.linalg.norm(mean_v - mean_j[j], axis=1))[:num_candidates]
        a = verts[:, cand, :].transpose(0, 2, 1).reshape(n * 3, len(cand))  # rows: subject, axis
        b = joints[:, j, :].reshape(n * 3)
        a = np.vstack([a, sum_weight * np.ones((1, len(cand)))])
        b = np.concatenate([b, [sum_weight]])
        w, _ = scipy.optimize.nnls(a, b, maxiter=50 * len(cand))
        if w.sum() <= 0:
            raise RuntimeError(f"joint {j}: NNLS found no convex combination of its {num_candidates} nearest vertices")
        regressor[j, cand] = w / w.sum()
    return regressor


# ------------------------------------------------------------------ W and P
def branch_of(parents):
    """[J] the depth-1 ancestor of every joint (its finger), -1 for the root."""
    parents = np.asarray(parents)
    branch = np.full(len(parents), -1, dtype=np.int64)
    for j in range(1, len(parents)):
        branch[j] = j if parents[j] == 0 else branch[parents[j]]
    return branch


def bone_distances(vertices, joints, parents):
    """Distance (mm) from every vertex to every bone.

    Bone b is the set of segments from joint b to each of its children (what G_b moves); a joint
    without children has no bone (distance inf).

    Args:
      vertices: [V, 3]; joints: [J, 3]; parents: [J].
    Returns:
      [V, J] float64.
    """
    vertices = np.asarray(vertices, np.float64)
    joints = np.asarray(joints, np.float64)
    parents = np.asarray(parents)
    dist = np.full((len(vertices), len(parents)), np.inf)
    for child in range(1, len(parents)):
        b = parents[child]
        a, c = joints[b], joints[child]
        seg = c - a
        t = np.clip((vertices - a) @ seg / max(seg @ seg, 1e-12), 0.0, 1.0)
        d = np.linalg.norm(vertices - (a + t[:, None] * seg), axis=1)
        dist[:, b] = np.minimum(dist[:, b], d)
    return dist


def candidate_bones(vertex_segment, parents, distances=None, nearest=3):
    """Which bones may skin each vertex.

    Always: the vertex's segment, the segment's parent and children (leaf joints -- finger tips --
    excluded, they carry no bone; for the root segment, the children only without ``distances``). With ``distances`` [V, J]
    (:func:`bone_distances` on the mean mesh), also its ``nearest`` closest bones. A vertex on a
    finger may only use bones of that finger and the root (a finger never drags another finger);
    palm vertices (segment 0) may use any bone.

    Args:
      vertex_segment: [V] joint whose bone each vertex mainly follows; parents: [J].
    Returns:
      bool [V, J].
    """
    seg = np.asarray(vertex_segment)
    parents = np.asarray(parents)
    num_joints = len(parents)
    family = np.zeros((num_joints, num_joints), bool)  # family[s, b]: bone b is s, parent(s) or a child of s
    for s in range(num_joints):
        family[s, s] = True
        if parents[s] >= 0:
            family[s, parents[s]] = True
        family[s, np.flatnonzero(parents == s)] = True
    if distances is not None:
        # the palm's own family would be every finger root; with geometry, keep only the nearest ones
        family[parents < 0] = np.eye(num_joints, dtype=bool)[parents < 0]
    cand = family[seg]
    branch = branch_of(parents)
    vbranch = branch[seg]
    same = (branch[None, :] == vbranch[:, None]) | (branch[None, :] < 0) | (vbranch[:, None] < 0)
    if distances is not None:
        d = np.where(same, np.asarray(distances, np.float64), np.inf)
        order = np.argsort(d, axis=1)[:, :nearest]
        near = np.zeros_like(cand)
        np.put_along_axis(near, order, True, axis=1)
        cand |= near & np.isfinite(d)
    # leaf joints (finger tips) move nothing of their own: G_tip only differs from G_parent by theta_tip
    has_children = np.isin(np.arange(num_joints), parents)
    leaf_ok = ~has_children[seg]  # a vertex whose segment is a leaf keeps it
    cand &= has_children[None, :] | (np.arange(num_joints)[None, :] == seg[:, None]) & leaf_ok[:, None]
    return cand & same


def pose_blend_support(candidates, parents, vertex_segment):
    """Which vertices the pose blend shapes of each joint may move.

    Joint j's rotation bends the surface around joint j, between bone parent(j) and bone j, so its
    9 features may move the vertices that may be skinned to parent(j), j or a child of j, on the same
    finger or on the palm. Bending one finger never moves another finger's vertices.

    Args:
      candidates: bool [V, J] from :func:`candidate_bones`; parents: [J]; vertex_segment: [V].
    Returns:
      bool [J, V] (row 0, the root, is all False: the global orientation never deforms the shape).
    """
    cand = np.asarray(candidates, bool)
    parents = np.asarray(parents)
    branch = branch_of(parents)
    vbranch = branch[np.asarray(vertex_segment)]
    num_joints = len(parents)
    support = np.zeros((num_joints, cand.shape[0]), bool)
    for j in range(1, num_joints):
        near = [j, int(parents[j])] + np.flatnonzero(parents == j).tolist()
        support[j] = cand[:, near].any(axis=1) & ((vbranch == branch[j]) | (vbranch < 0))
    return support


def initial_weights(candidates, distances=None, vertex_segment=None, scale=5.0):
    """[V, J] initial skinning weights over the candidate bones.

    With ``distances``: proportional to ``exp(-(d - d_min) / scale)`` (scale in mm); else one-hot on
    ``vertex_segment``. Zero outside ``candidates``.
    """
    cand = np.asarray(candidates, bool)
    if distances is None:
        w = np.zeros(cand.shape)
        w[np.arange(len(w)), np.asarray(vertex_segment)] = 1.0
        return w
    d = np.where(cand, np.asarray(distances, np.float64), np.inf)
    d = np.where(np.isfinite(d), d, np.inf)
    best = np.min(np.where(np.isfinite(d), d, 1e9), axis=1, keepdims=True)
    w = np.where(np.isfinite(d), np.exp(-(d - best) / scale), 0.0)
    empty = w.sum(axis=1) == 0  # only leaf bones among the candidates: fall back to the segment
    if empty.any():
        w[empty, np.asarray(vertex_segment)[empty]] = 1.0
    return w / w.sum(axis=1, keepdims=True)


def fit_skinning_and_blends(subject_rest, subject_joints, subject_index, theta, target, parents,
                            candidates, blend_support, init_weights, *, steps=2000, batch_size=32,
                            learning_rate=0.01, decay_rate=0.9, decay_steps=None, blend_scale=1.0,
                            seed=0, log_every=0, log_fn=print):
    """Fits W and P with Adam, minimising Eq. 9 (mean Euclidean vertex error).

    V_{s,p} = LBS(T_s + P . pose_feature(theta_{s,p}), J0_s, theta_{s,p}, W), with T_s and J0_s the
    subject's own neutral mesh and joints.

    Args:
      subject_rest: [N, V, 3] neutral meshes (mm); subject_joints: [N, J, 3] rest joints (mm).
      subject_index: int [M] subject of each sample; theta: [M, J, 3]; target: [M, V, 3] posed meshes.
      parents: [J]. candidates: bool [V, J] bones allowed per vertex. blend_support: bool [J, V].
      init_weights: [V, J] starting W (zero outside ``candidates``).
      steps, batch_size: Adam iterations and samples per step.
      learning_rate, decay_rate, decay_steps: exponential decay (default decay_steps = one epoch,
        the appendix's "0.9 ... per epoch").
      blend_scale: P is parameterised as ``blend_scale * p`` (mm) so the step size suits mm units.
    Returns:
      (weights [V, J] float64, pose_basis [P, V, 3] float64, history list of (step, loss mm)).
    """
    subject_rest = tf.constant(subject_rest, tf.float32)
    subject_joints = tf.constant(subject_joints, tf.float32)
    subject_index = tf.constant(subject_index, tf.int32)
    theta = tf.constant(theta, tf.float32)
    target = tf.constant(target, tf.float32)
    num_samples = int(theta.shape[0])
    v = int(subject_rest.shape[1])
    num_joints = len(parents)
    num_features = 9 * (num_joints - 1)
    plan = ChainPlan(parents)
    cand = np.asarray(candidates, bool)
    mask_bias = tf.constant(np.where(cand, 0.0, -1e9), tf.float32)
    init = np.asarray(init_weights, np.float64)
    logits = tf.Variable(np.where(cand, np.log(np.maximum(init, 1e-4)), 0.0).astype(np.float32), name="w_logits")
    feature_support = np.repeat(np.asarray(blend_support, bool)[1:], 9, axis=0)  # [P, V]
    p_mask = tf.constant(np.repeat(feature_support[:, :, None], 3, axis=2).reshape(num_features, v * 3), tf.float32)
    blend = tf.Variable(tf.zeros([num_features, v * 3]), name="pose_blend")
    decay_steps = decay_steps or max(1, num_samples // batch_size)
    schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps, decay_rate)
    opt = keras.optimizers.Adam(learning_rate=schedule)

    def model_weights():
        return tf.nn.softmax(logits + mask_bias, axis=-1), blend * p_mask * blend_scale

    @tf.function(reduce_retracing=True)
    def step(idx):
        with tf.GradientTape() as tape:
            w, p = model_weights()
            s = tf.gather(subject_index, idx)
            pred, _ = pose_and_skin(plan, tf.gather(subject_rest, s), tf.gather(subject_joints, s),
                                    tf.gather(theta, idx), p, w)
            diff = pred - tf.gather(target, idx)
            loss = tf.reduce_mean(tf.sqrt(tf.reduce_sum(tf.square(diff), axis=-1) + 1e-8))
        grads = tape.gradient(loss, [logits, blend])
        opt.apply_gradients(zip(grads, [logits, blend]))
        return loss

    rng = np.random.default_rng(seed)
    history = []
    running = []
    for it in range(steps):
        idx = rng.choice(num_samples, size=min(batch_size, num_samples), replace=False)
        running.append(float(step(tf.constant(idx, tf.int32))))
        if log_every and ((it + 1) % log_every == 0 or it == steps - 1):
            history.append((it + 1, float(np.mean(running))))
            log_fn(f"W/P fit step {it + 1}/{steps}: mean vertex error {np.mean(running):.3f} mm")
            running = []
    w, p = model_weights()
    w = w.numpy().astype(np.float64)
    w[~cand] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    return w, p.numpy().astype(np.float64).reshape(num_features, v, 3), history


def vertex_error_stats(pred, target):
    """Mean, median, 95th percentile and max of per-vertex Euclidean errors (mm).

    Args:
      pred, target: [..., V, 3].
    """
    err = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(target, np.float64), axis=-1).ravel()
    return {"mean_mm": float(err.mean()), "median_mm": float(np.median(err)),
            "p95_mm": float(np.percentile(err, 95)), "max_mm": float(err.max()), "count": int(err.size)}
