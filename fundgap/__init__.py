"""fundgap: Bayesian multilevel re-analysis of medical crowdfunding outcomes in China.

The data flow is one way: a data folder is validated (`contract`), turned into an
analysis-ready table (`prepare`), fitted as a joint Bayesian model (`bayesian`, the model
built in `build`) and by the study's own methods (`frequentist_tables`), and written to a fit
folder (`fitfolder`); `pipeline` is that flow, shared by the command line (`cli`), the batch
(`batch`) and the Python API below (`api`); `simulation` writes data folders with known
truth.

    import fundgap
    result = fundgap.fit("models/regional_mediation.toml", data="data/default")
    result.effects; result.save("fits/mine"); fundgap.load("fits/mine")

The API: fit, load, simulate, validate, prepare, frequentist (see fundgap.api).
"""

__version__ = "0.1.0"

# the submodules whose names the API's functions take are imported first, so that the
# functions, bound after them, stay what `fundgap.prepare` names
import fundgap.prepare  # noqa: F401
from fundgap.api import fit, frequentist, load, prepare, simulate, validate
from fundgap.contract import Dataset, Problem, load_dataset
from fundgap.errors import DataContractError, FundgapError
from fundgap.prepare import PreparedData, PrepareOptions

__all__ = [
    "DataContractError",
    "Dataset",
    "FundgapError",
    "PrepareOptions",
    "PreparedData",
    "Problem",
    "__version__",
    "fit",
    "frequentist",
    "load",
    "load_dataset",
    "prepare",
    "simulate",
    "validate",
]
