"""Build the packaged coarsened hand-mesh graph hsr_tf/assets/mesh_graph.npz from the hand model's faces.

  python -m data_prep.build_mesh_graph [--levels=4] [--seed=0] [--out=hsr_tf/assets/mesh_graph.npz]

Deterministic for (faces, levels, seed); tests/test_graph_asset.py checks the shipped asset against a rebuild.
"""
from absl import app, flags, logging

flags.DEFINE_integer("levels", 4, "Coarsening levels (paper: 4, x16).")
flags.DEFINE_integer("seed", 0, "Seed of the level-0 visiting order of Graclus.")
flags.DEFINE_string("hand_model", None, "Hand model .npz whose faces define the graph (default: packaged).")
flags.DEFINE_string("out", None, "Output .npz (default: the packaged asset path).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hsr_tf.graph import build_mesh_graph, default_asset_path
    from hsr_tf.hand_model import HandModel

    model = HandModel.load(FLAGS.hand_model)
    graph = build_mesh_graph(model.faces, levels=FLAGS.levels, seed=FLAGS.seed, num_vertices=model.num_vertices)
    out = FLAGS.out or default_asset_path()
    graph.save(out)
    logging.info("Wrote %s: %s; lambda_max %s", out, graph.summary(), [round(x, 4) for x in graph.lmax])
    print(graph.summary())


if __name__ == "__main__":
    app.run(main)
