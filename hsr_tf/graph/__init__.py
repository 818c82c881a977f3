"""Mesh graphs for the RGB Graph-CNN (Ge et al.): Laplacians, Graclus coarsening, the packaged hand-mesh graph.

``from hsr_tf.graph import MeshGraph, load_mesh_graph, build_mesh_graph``.
"""
from hsr_tf.graph.laplacian import (max_eigenvalue, mesh_adjacency, mesh_edges, normalized_laplacian,
                                    rescaled_laplacian)
from hsr_tf.graph.mesh_graph import MeshGraph, build_mesh_graph, default_asset_path, load_mesh_graph

__all__ = ["MeshGraph", "build_mesh_graph", "load_mesh_graph", "default_asset_path", "mesh_adjacency", "mesh_edges",
           "normalized_laplacian", "rescaled_laplacian", "max_eigenvalue"]
