"""``loopwise demo``: replay MovieLens-100K through a local stack and show that traffic flows.

Uses the stack running in ``root`` if there is one, else starts one (and
stops it afterwards unless ``keep``). Then, for the first ``requests``
ratings in timestamp order, it ranks the rated movie among 19 movies the user
never rated (drawn by popularity), and reports feedback: a Click on the rated
movie at its served position when the rating is 4 or 5, else a Reject of it;
from the middle of the replay one segment of users prefers other movies
(`shift`), and the online AUC of the model alone and with its error memory
is shown per slice. Feedback goes in batches through the client's
``send``/``flush``.

At the end it reads the impressions and events topics back from the broker
(until idle: end offsets are not trusted), decodes one impression, scrapes
the services' metrics, and returns non-zero if anything did not flow.

The parts: `flow` (the stack, the steps in order, `run`), `recommender` (the
replay and its online AUC), `shift` (the injected preference shift), `assistant` (the simulated voice-assistant
rounds), `plot` (the PNG), `readback` (broker, metrics, what did not flow).
"""

from loopwise.tools.demo.common import DemoError
from loopwise.tools.demo.flow import run

__all__ = ["DemoError", "run"]
