"""Issue 27: each option stated once.  The suite options (suite/config.Config's fields), the
call options (suite/config.CALL_KEYS) and the loss options (spec.LossSpec) must agree with the
CLI's ``check`` flags, the batch file's keys, the Python API and the Case each builds; a new
option missing from one of them fails here, naming it."""

import dataclasses
import inspect
import os
import subprocess
import sys

from softcheck.candidate.settings import settings
from softcheck.spec import LossSpec
from softcheck.suite import batchfile
from softcheck.suite.cases import CASE_KNOBS, Case
from softcheck.suite.config import CALL_KEYS, CONFIG_KEYS, SPEC_FIELDS, Config


def fields(cls):
    return {f.name for f in dataclasses.fields(cls)}


def test_every_option_is_a_check_flag_and_a_batch_key():
    from softcheck.cli.commands import cli

    flags = {p.name for p in cli.commands["check"].params}
    assert [k for k in (*CONFIG_KEYS, *CALL_KEYS) if k not in flags] == []
    assert set(batchfile.KEYS) == {*CONFIG_KEYS, "timeout"}
    assert tuple(batchfile.CALL) == CALL_KEYS


def test_call_options_are_the_settings_and_the_apis():
    from softcheck import api

    params = inspect.signature(settings).parameters
    assert [k for k in CALL_KEYS if k not in params] == []
    assert set(api.CALL_OPTIONS) == set(CALL_KEYS) - {"backward"}


def test_loss_options_are_config_fields_and_cases_take_config_knobs():
    assert set(SPEC_FIELDS) == fields(LossSpec) - {"targets", "reduction"}
    assert set(SPEC_FIELDS) <= fields(Config)
    assert set(CASE_KNOBS) <= fields(Case) & fields(Config)
    spec = Config(label_smoothing=0.25, softcap=3.0).loss_spec("index", "sum")
    assert (spec.label_smoothing, spec.softcap, spec.reduction) == (0.25, 3.0, "sum")


def test_new_flags_are_in_check_help():
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", "--help"],
                       capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.getcwd(), COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    for flag in ("--kwarg", "--off-value", "--rank-setup", "--weight-dtype", "--shape",
                 "--shift", "--rename"):
        assert flag in r.stdout, flag
