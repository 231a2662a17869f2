"""Both simulators served over real HTTP on 127.0.0.1, and the sandbox's Pipedrive plan."""

from __future__ import annotations

from simulators.ifs.app import create_app as create_ifs_app
from simulators.ifs.settings import IfsSimSettings
from simulators.ifs.state import IfsSim
from simulators.pipedrive.app import create_app as create_pipedrive_app
from simulators.pipedrive.settings import PipedriveSimSettings
from simulators.pipedrive.state import PipedriveSim
from simulators.serving import RunningServer


def fast_pipedrive_settings() -> PipedriveSimSettings:
    """Limits high enough that ordinary runs never see a 429; webhook delays 100x shorter.

    A test or benchmark that exercises a limit lowers it on these settings.
    """
    return PipedriveSimSettings(
        api_token_burst=10_000,
        oauth_burst=10_000,
        search_burst=10_000,
        daily_budget=100_000_000,
        webhook_delay_scale=0.01,
        webhook_timeout_s=2.0,
    )


class Simulators:
    """An IFS Cloud and a Pipedrive simulator, each on its own port; `stop()` ends both."""

    def __init__(self, ifs: IfsSimSettings, pipedrive: PipedriveSimSettings) -> None:
        self.ifs_app = create_ifs_app(ifs)
        self.pipedrive_app = create_pipedrive_app(pipedrive)
        self.ifs: IfsSim = self.ifs_app.extensions["ifs_sim"]
        self.pipedrive: PipedriveSim = self.pipedrive_app.extensions["pipedrive_sim"]
        self.ifs_server = RunningServer(self.ifs_app)
        self.pipedrive_server = RunningServer(self.pipedrive_app)
        self.ifs_url, self.pipedrive_url = self.ifs_server.url, self.pipedrive_server.url
        # Pipedrive answers with its own api_domain (OAuth tokens, links): the served URL.
        pipedrive.api_domain = self.pipedrive_url

    def start(self) -> Simulators:
        self.ifs_server.start()
        self.pipedrive_server.start()
        return self

    def stop(self) -> None:
        self.ifs_server.stop()
        self.pipedrive_server.stop()
        self.pipedrive.stop()  # its webhook delivery threads
