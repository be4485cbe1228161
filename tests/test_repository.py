"""The repository keeps its promises: CI runs the README's commands; commands answer --help."""
import re
import subprocess
import sys

from conftest import REPO, bin_path


def _readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text(encoding="utf-8"))


def test_ci_runs_the_readme_test_command():
    test_cmd = [c for c in _readme_commands() if "pytest" in c]
    assert len(test_cmd) == 1
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    assert test_cmd[0] in ci_lines


def test_readme_demo_command_uses_the_same_install():
    demo = [c for c in _readme_commands() if "nnunet-ssl demo" in c]
    test = [c for c in _readme_commands() if "pytest" in c]
    assert demo and test
    assert demo[0].split(" -e ")[0] == test[0].split(" -e ")[0]


def test_cli_help_lists_every_command():
    out = subprocess.run([bin_path("nnunet-ssl"), "--help"], capture_output=True, text=True, encoding="utf-8", errors="replace", check=True).stdout
    from nnunet_ssl.cli.main import COMMANDS

    for name in COMMANDS:
        assert name in out
    out = subprocess.run([bin_path("nnunet-ssl-transfer"), "--help"], capture_output=True, text=True, encoding="utf-8", errors="replace",
                         check=True).stdout
    assert "--force" in out and "--student" in out


def test_help_does_not_import_heavy_libraries():
    code = ("import sys; from nnunet_ssl.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'nnunetv2', 'SimpleITK', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", check=True).stdout
    assert out.strip() == "[]"


def test_trainer_found_by_nnunet_lookup(planned):
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "print(f('nnUNetTrainerDeSD').__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", env=planned["env"], check=True)
    assert proc.stdout.strip().splitlines()[-1] == "nnunet_ssl.desd.trainer"


def test_settings_reference_lists_every_setting():
    import dataclasses

    from nnunet_ssl.desd.settings import DeSDSettings

    doc = (REPO / "docs" / "pretraining.md").read_text(encoding="utf-8")
    for f in dataclasses.fields(DeSDSettings):
        assert f"| `{f.name}` | " in doc, f.name


def test_every_docs_page_is_linked_and_every_relative_link_resolves():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert pages
    for name in pages:
        assert f"](docs/{name})" in readme, f"docs/{name} is not linked from README.md"
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
