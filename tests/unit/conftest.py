import pytest


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request):
    """Run a test with its input fed whole and one octet at a time."""
    return request.param
