"""learnloop: let coding agents improve their own local model from experience.

Every capability is a plain function in a submodule of this package. Importing the
package (or any module the MCP server needs at start-up) never imports torch,
transformers, peft, trl or datasets: those load inside the functions that train or
evaluate, which run as jobs in their own processes.
"""

__version__ = "0.1.0"
