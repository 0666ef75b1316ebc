"""Who multiplies a decode step's one sequence by a weight stored by rows (``seqzoo.kernels.product_choice``): the
processor's vendor as read, the default choice on Intel's and AMD's processors, the choice set and refused, and the
``with`` block that restores it. (What each choice runs: tests/kernels/test_onednn_linear.py and
tests/kernels/test_one_row_products.py.)"""

from __future__ import annotations

import pytest
import torch

from seqzoo.kernels import product_choice


@pytest.fixture
def host(monkeypatch, tmp_path):
    """Pretend to be a processor: ``host(text)`` writes ``text`` as /proc/cpuinfo and forgets what was read."""
    def pretend(cpuinfo, processor=""):
        path = tmp_path / "cpuinfo"
        if cpuinfo is None:
            path.unlink(missing_ok=True)  # (no /proc: the platform's answer)
        else:
            path.write_text(cpuinfo)
        monkeypatch.setattr(product_choice, "CPUINFO", str(path))
        monkeypatch.setattr(product_choice.platform, "processor", lambda: processor)
        monkeypatch.setattr(product_choice, "_vendor", False)
        monkeypatch.setattr(product_choice, "_mkl_on_intel", None)
    yield pretend
    monkeypatch.undo()
    product_choice._vendor, product_choice._mkl_on_intel = False, None  # (read again from the real host)


INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\n"
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n"


def test_the_vendor_is_read_from_cpuinfo_or_the_platform(host):
    host(INTEL)
    assert product_choice.processor_vendor() == "GenuineIntel"
    host(AMD)
    assert product_choice.processor_vendor() == "AuthenticAMD"
    host(ARM, processor="Intel64 GenuineIntel")  # (no vendor line: unknown, whatever the platform module says)
    assert product_choice.processor_vendor() is None
    host(None, processor="Intel64 Family 6 Model 85 Stepping 7, GenuineIntel")  # (no /proc: Windows' answer)
    assert product_choice.processor_vendor() == "GenuineIntel"
    host(None, processor="arm")
    assert product_choice.processor_vendor() is None


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch has no MKL")
def test_auto_chooses_torchs_products_where_mkl_runs_on_an_intel_processor(host):
    assert product_choice.chosen() == "auto"
    host(INTEL)
    assert not product_choice.seqzoo_products()
    for other in (AMD, ARM):
        host(other)
        assert product_choice.seqzoo_products()


def test_auto_chooses_seqzoos_products_without_mkl(host, monkeypatch):
    host(INTEL)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    assert product_choice.seqzoo_products() and product_choice.onednn_rows() == 1


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch has no MKL")
def test_the_rows_onednn_multiplies_by_default_and_as_chosen(host):
    host(INTEL)  # MKL's product for one to three rows, oneDNN's from four (run AK)
    assert product_choice.onednn_rows() == product_choice.INTEL_ONEDNN_ROWS == 4
    host(AMD)
    assert product_choice.onednn_rows() == 1
    for vendor in (INTEL, AMD):
        host(vendor)
        with product_choice.products("seqzoo"):
            assert product_choice.onednn_rows() == 1
        with product_choice.products("torch"):
            assert product_choice.onednn_rows() == product_choice.NEVER > 16


def test_a_choice_set_holds_on_every_processor_and_the_with_block_restores_it(host):
    host(INTEL)
    with product_choice.products("seqzoo"):
        assert product_choice.chosen() == "seqzoo" and product_choice.seqzoo_products()
        with pytest.raises(RuntimeError, match="inside"), product_choice.products("torch"):
            assert not product_choice.seqzoo_products()
            raise RuntimeError("inside")
        assert product_choice.chosen() == "seqzoo"
    assert product_choice.chosen() == "auto"
    host(AMD)
    product_choice.set_products("torch")
    try:
        assert not product_choice.seqzoo_products()
        product_choice.set_products("auto")
        assert product_choice.seqzoo_products()
    finally:
        product_choice._choice = None  # (the environment's again, as before the test)


@pytest.mark.parametrize("bad", ["mkl", "Torch", None, True])
def test_an_unknown_choice_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match=r"is not a choice; choose one of 'auto', 'torch', 'seqzoo'"):
        product_choice.set_products(bad)
    with pytest.raises(ValueError, match=r"^products: .* is not a choice"), product_choice.products(bad):
        pass
    assert product_choice.chosen() == "auto"


@pytest.fixture
def environment(monkeypatch):
    """``environment(value)``: SEQZOO_PRODUCTS set to ``value`` (None: unset), read afresh."""
    def set_to(value):
        if value is None:
            monkeypatch.delenv(product_choice.ENV, raising=False)
        else:
            monkeypatch.setenv(product_choice.ENV, value)
        monkeypatch.setattr(product_choice, "_env", None)
    yield set_to
    monkeypatch.undo()
    product_choice._env = None  # (read again from the real environment)


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch has no MKL")
def test_the_environment_chooses_where_set_products_has_not(host, environment):
    host(INTEL)
    for value, one_row, rows in ((None, False, 4), ("", False, 4), ("auto", False, 4), ("seqzoo", True, 1),
                                 (" Torch ", False, product_choice.NEVER)):
        environment(value)
        assert product_choice.environment_error() is None
        assert (product_choice.seqzoo_products(), product_choice.onednn_rows()) == (one_row, rows), value
    assert product_choice.chosen() == "torch"
    with product_choice.products("seqzoo"):  # the API over the environment, and the environment's again after
        assert product_choice.onednn_rows() == 1
    assert product_choice.chosen() == "torch"


def test_an_environment_value_that_is_no_choice_is_named_at_each_step_and_by_the_checks(environment):
    from seqzoo.kernels import onednn_linear, registry

    environment("mkl")
    message = r"SEQZOO_PRODUCTS='mkl' is not a choice of who multiplies a decode step's rows; choose one of 'auto'"
    assert "SEQZOO_PRODUCTS='mkl' is not a choice" in product_choice.environment_error()
    for ask in (product_choice.seqzoo_products, product_choice.onednn_rows, product_choice.chosen,
                onednn_linear.rows_from):
        with pytest.raises(ValueError, match=message):
            ask()
    with pytest.raises(registry.KernelError, match=message):
        registry.check_environment()
    with product_choice.products("torch"):  # (set in Python: the environment is not asked)
        assert not product_choice.seqzoo_products()
