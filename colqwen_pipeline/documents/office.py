"""Office documents (DOCX/PPTX/XLSX, ODF, legacy OLE DOC/PPT/XLS) to PDF with headless LibreOffice."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

from colqwen_pipeline.documents.guard import WorkerError, kill_group, start_capped
from colqwen_pipeline.documents.sniff import OLE_MAGIC

# Zip members that tell LibreOffice's filter detection which import filter to use.
log = logging.getLogger(__name__)
OOXML_EXT = {"word/": ".docx", "ppt/": ".pptx", "xl/": ".xlsx"}
ODF_EXT = {"text": ".odt", "presentation": ".odp", "spreadsheet": ".ods"}


# Seeded into every conversion's fresh profile. A hostile document can link pictures, sections and
# OLE objects to http:// or file:// URLs; LibreOffice would fetch them and paint them into the page
# we index (SSRF, local file disclosure). BlockUntrustedRefererLinks refuses every link from a
# document outside a trusted location (SecureURL is empty), which covers linked graphics; the
# Update/Link modes say "never" (Writer: LinkUpdateModes.NEVER = 0, Calc: LM_NEVER = 1).
PROFILE_SETTINGS = (  # (node path, property, value)
    ("org.openoffice.Office.Common/Security/Scripting", "BlockUntrustedRefererLinks", "true"),
    ("org.openoffice.Office.Common/Security/Scripting", "DisableMacrosExecution", "true"),
    ("org.openoffice.Office.Writer/Content/Update", "Link", "0"),
    ("org.openoffice.Office.Calc/Content/Update", "Link", "1"),
)
REGISTRY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<oor:items xmlns:oor="http://openoffice.org/2001/registry">\n'
    + "".join(
        f'<item oor:path="/{node}"><prop oor:name="{name}" oor:op="fuse"><value>{value}</value></prop></item>\n'
        for node, name, value in PROFILE_SETTINGS
    )
    + "</oor:items>\n"
)
# Network namespaces, tried in order: as root, and as a user where unprivileged user namespaces are on.
NO_NETWORK_PREFIXES = (("unshare", "--net"), ("unshare", "--net", "--map-root-user"))


def soffice_binary() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


def convert_to_pdf(path: Path, work_dir: Path, memory_mb: int, deadline: float) -> Path:
    """Convert ``path`` into ``work_dir``/document.pdf; raise WorkerError if that fails."""
    binary = soffice_binary()
    if binary is None:
        raise WorkerError("office", "LibreOffice (soffice) is not installed")
    src = work_dir / f"document{_extension(path)}"
    src.symlink_to(path)  # a neutral name with the right suffix; the source file is never touched
    # A profile per conversion: two soffice processes sharing one silently drop a conversion.
    # Its TMPDIR goes in the same throw-away folder: a killed soffice leaves pipes and temp dirs.
    scratch = Path(tempfile.mkdtemp(prefix="colqwen-lo-"))
    try:
        _run_soffice(binary, src, work_dir, scratch, memory_mb, deadline)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    pdf = work_dir / "document.pdf"
    if not pdf.is_file() or pdf.stat().st_size == 0:  # corrupt input exits 0 like this
        raise WorkerError("office", "LibreOffice produced no PDF: the file is damaged or not the format it claims")
    return pdf


def _run_soffice(binary: str, src: Path, out: Path, scratch: Path, memory_mb: int, deadline: float) -> None:
    profile, tmp = scratch / "profile", scratch / "tmp"
    tmp.mkdir()
    _seed_profile(profile)
    cmd = [
        *no_network_prefix(),
        binary,
        "--headless",
        "--norestore",
        "--nolockcheck",
        "--convert-to",
        "pdf",
        "--outdir",
        str(out),
        f"-env:UserInstallation={profile.as_uri()}",
        str(src),
    ]
    proc = start_capped(
        cmd,
        memory_mb,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp)},
        start_new_session=True,
    )
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise WorkerError("timeout", "time limit") from None
    finally:
        kill_group(proc)  # soffice can leave oosplash/soffice.bin children behind
    if proc.returncode < 0 or proc.returncode in ABORTED:
        raise WorkerError("memory", f"LibreOffice stopped by signal {abs(proc.returncode) % 128}")


# soffice's wrapper script reports soffice.bin's death by a signal as 128 + signal: under the address-space
# cap a failed allocation ends in abort() (SIGABRT, 134; measured: a DOCX under a 400 MB cap), the kernel's
# OOM killer sends SIGKILL (137).
ABORTED = frozenset({134, 137})


@functools.cache
def no_network_prefix() -> tuple[str, ...]:
    """A command prefix that runs soffice without any network, or () where namespaces are not allowed.

    Without one the profile settings above still block linked content; the namespace is the second wall.
    """
    if shutil.which("unshare") is None:
        return ()
    for prefix in NO_NETWORK_PREFIXES:
        probe = subprocess.run([*prefix, "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if probe.returncode == 0:
            return prefix
    log.warning("no network namespace available (unshare refused): LibreOffice runs with links blocked only")
    return ()


def _seed_profile(profile: Path) -> None:
    user = profile / "user"
    user.mkdir(parents=True)
    (user / "registrymodifications.xcu").write_text(REGISTRY)


def _extension(path: Path) -> str:
    """Pick the suffix from content (a .bin that is a DOCX still converts)."""
    with path.open("rb") as f:
        if f.read(8) == OLE_MAGIC:
            return path.suffix.lower() or ".doc"  # LibreOffice sniffs OLE streams itself
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            mimetype = z.read("mimetype").decode(errors="replace") if "mimetype" in names else ""
    except (zipfile.BadZipFile, OSError, KeyError):
        return path.suffix.lower()
    for prefix, ext in OOXML_EXT.items():
        if any(n.startswith(prefix) for n in names):
            return ext
    for word, ext in ODF_EXT.items():
        if word in mimetype:
            return ext
    return path.suffix.lower()
