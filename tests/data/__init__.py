"""Reference data the tests check the simulators and clients against."""

from pathlib import Path

SPECS_DIR = Path(__file__).parent / "specs"
PIPEDRIVE_SPECS = SPECS_DIR / "pipedrive"
IFS_SAMPLES = SPECS_DIR / "ifs" / "samples"
