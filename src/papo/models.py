"""Every feature's ORM classes on the one metadata.

A foreign key may point into another feature's table (chat_sessions to assistants and to WhatsApp
numbers), and SQLAlchemy resolves it only when both tables are loaded: the first flush fails
otherwise. Each entry point (the app, the CLI, the benchmarks) imports this module; features never
do, since that would make them import the features above them."""

from papo.assistants import models as assistants
from papo.auth import models as auth
from papo.chat import models as chat
from papo.insights import models as insights
from papo.knowledge import models as knowledge
from papo.ops import models as ops
from papo.realtime import models as realtime
from papo.webhooks import models as webhooks
from papo.whatsapp import models as whatsapp

EVERY_FEATURE = (assistants, auth, chat, insights, knowledge, ops, realtime, webhooks, whatsapp)
