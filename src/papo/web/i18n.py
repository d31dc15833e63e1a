"""Two languages, Portuguese (Brazil) and English, for every string of the web app.

The language comes from the `papo_lang` cookie (the switch) or else Accept-Language; dates and
numbers are formatted for it with Babel."""

from __future__ import annotations

from datetime import datetime

from babel.dates import format_datetime, format_timedelta
from babel.numbers import format_decimal

LANGUAGES = {"pt-BR": "Português", "en": "English"}
DEFAULT_LANGUAGE = "pt-BR"
LANG_COOKIE = "papo_lang"

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "app.tagline": "Chat with your assistant",
        "nav.chats": "Chats",
        "nav.settings": "Settings",
        "nav.skip": "Skip to content",
        "nav.menu": "Menu",
        "auth.sign_in": "Sign in",
        "auth.sign_up": "Create account",
        "auth.sign_out": "Sign out",
        "auth.sign_out_all": "Sign out everywhere",
        "auth.email": "E-mail",
        "auth.password": "Password",
        "auth.name": "Name",
        "auth.no_account": "No account yet?",
        "auth.have_account": "Already have an account?",
        "auth.wrong": "Wrong e-mail or password. Check them and try again.",
        "auth.throttled": "Too many attempts. Wait {seconds} seconds and try again.",
        "auth.signup_closed": "This workspace does not accept new accounts. Ask an admin for an invitation.",
        "auth.exists": "An account with this e-mail already exists. Sign in instead.",
        "auth.password_rule": "At least 10 characters.",
        "auth.session_ended": "Your session ended. Sign in again; your draft is kept.",
        "auth.pick_workspace": "This account belongs to several workspaces. Choose one:",
        "auth.or": "or",
        "auth.with_google": "Sign in with Google",
        "auth.with_provider": "Sign in with {provider}",
        "dash.new_chat": "New chat",
        "dash.search": "Search your chats",
        "dash.active": "Active",
        "dash.archived": "Archived",
        "dash.empty": "No chats yet. Start one!",
        "dash.load_more": "Load more",
        "dash.untitled": "New chat",
        "dash.rename": "Rename",
        "dash.archive": "Archive",
        "dash.unarchive": "Restore",
        "dash.delete": "Delete",
        "dash.deleted": "Chat deleted.",
        "dash.undo": "Undo",
        "dash.export": "Export",
        "dash.no_results": "Nothing found.",
        "dash.results": "Search results",
        "chat.placeholder": "Write a message…",
        "chat.send": "Send",
        "chat.stop": "Stop",
        "chat.regenerate": "Regenerate",
        "chat.edit": "Edit",
        "chat.copy": "Copy",
        "chat.copied": "Copied",
        "chat.retry": "Retry",
        "chat.save_resend": "Save and send",
        "chat.cancel": "Cancel",
        "chat.versions": "Earlier versions",
        "chat.earlier": "earlier version",
        "chat.status.sending": "Sending…",
        "chat.status.sent": "Sent",
        "chat.status.delivered": "Delivered",
        "chat.status.error": "Not delivered",
        "chat.status.streaming": "Writing…",
        "chat.status.stopped": "Stopped",
        "chat.status.interrupted": "Interrupted",
        "chat.hint": "Enter sends, Shift+Enter adds a line, Esc stops the reply.",
        "chat.you": "You",
        "chat.assistant": "Assistant",
        "chat.empty": "Ask anything to start.",
        "rt.reconnecting": "Reconnecting…",
        "theme.label": "Theme",
        "theme.system": "System",
        "theme.light": "Light",
        "theme.dark": "Dark",
        "lang.label": "Language",
        "error.title": "Something went wrong",
        "error.back": "Back to your chats",
        "error.not_found": "This page does not exist, or it is not yours.",
        "inbox.title": "WhatsApp inbox",
        "inbox.open": "Open",
        "inbox.pending": "Waiting for an agent",
        "inbox.closed": "Closed",
        "inbox.empty": "No conversations here.",
        "inbox.pick": "Pick a conversation.",
        "inbox.reply": "Reply",
        "inbox.assign_me": "Assign to me",
        "inbox.assigned": "Assigned to",
        "inbox.close": "Close",
        "inbox.reopen": "Reopen",
        "inbox.bot_on": "Hand back to the bot",
        "inbox.bot_off": "Take over from the bot",
        "inbox.bot": "Bot",
        "inbox.customer": "Customer",
        "inbox.agent": "Agent",
        "inbox.delivery.pending": "Sending…",
        "inbox.delivery.sent": "Sent",
        "inbox.delivery.delivered": "Delivered",
        "inbox.delivery.read": "Read",
        "inbox.delivery.failed": "Not delivered",
        "wa.title": "WhatsApp numbers",
        "wa.new": "Connect a number",
        "wa.name": "Name",
        "wa.create": "Create",
        "wa.scan": "Scan this code with WhatsApp on the phone: Settings → Linked devices.",
        "wa.restart": "Restart",
        "wa.stop": "Stop",
        "wa.remove": "Remove",
        "wa.empty": "No WhatsApp numbers yet.",
        "settings.title": "Workspace settings",
        "settings.brand": "Brand",
        "settings.brand_name": "Name shown in the app",
        "settings.logo": "Logo (https:// image URL)",
        "settings.primary": "Primary colour",
        "settings.accent": "Accent colour",
        "settings.signup_open": "Anyone with the sign-up link may create an account",
        "settings.signup_link": "Sign-up link",
        "settings.save": "Save",
        "settings.saved": "Saved.",
        "settings.members": "Members and roles",
        "settings.role": "Role",
        "settings.api_keys": "API keys",
        "settings.key_name": "Key name",
        "settings.create_key": "Create key",
        "settings.key_once": "Copy this key now: it will not be shown again.",
        "settings.revoke": "Revoke",
        "settings.revoked": "Revoked",
        "settings.activity": "Activity (last 30 days)",
        "settings.messages": "Messages",
        "settings.active_users": "Active members",
        "settings.sessions_created": "Chats opened",
        "settings.estimated_cost": "Estimated AI cost",
        "settings.chart_title": "Messages per day, up to {peak}, with the day's average sentiment below",
        "settings.chart_day": "{users} from people, {replies} replies",
        "settings.sentiment": "sentiment",
        "settings.legend_user": "From members and customers",
        "settings.legend_reply": "Replies",
        "settings.legend_mood": "Average sentiment (positive above the line, negative below)",
        "settings.model": "Model",
        "settings.prompt_tokens": "Input tokens",
        "settings.completion_tokens": "Output tokens",
        "settings.no_price": "no price set",
        "settings.whatsapp_number": "WhatsApp number",
        "settings.received": "Received",
        "settings.sent": "Sent",
        "hooks.title": "Webhooks",
        "hooks.add": "Send events to a URL",
        "hooks.description": "Description",
        "hooks.events": "Events",
        "hooks.privacy": (
            "Members' own chats are sent as references (ids, status, times), never their text; "
            "WhatsApp conversations are sent in full."
        ),
        "hooks.create": "Add webhook",
        "hooks.secret_once": "Signing secret (Standard Webhooks), shown only now:",
        "hooks.test": "Send a test",
        "hooks.delete": "Remove",
        "hooks.event": "Event",
        "hooks.status": "Status",
        "hooks.attempts": "Attempts",
        "hooks.answer": "Last answer",
        "hooks.replay": "Replay",
        "hooks.none": "No deliveries yet.",
        "hooks.pending": "Pending",
        "hooks.delivered": "Delivered",
        "hooks.failed": "Failed",
        "hooks.queued": "Queued.",
        "settings.webhooks": "Webhooks",
        "settings.usage": "AI usage (last 30 days)",
        "settings.day": "Day",
        "settings.replies": "Replies",
        "settings.tokens": "Tokens",
        "settings.assistants": "Assistants",
        "settings.assistants_api": "Manage assistants through the API: /api/v1/assistants",
        "settings.default": "default",
    },
    "pt-BR": {
        "app.tagline": "Converse com seu assistente",
        "nav.chats": "Conversas",
        "nav.settings": "Configurações",
        "nav.skip": "Pular para o conteúdo",
        "nav.menu": "Menu",
        "auth.sign_in": "Entrar",
        "auth.sign_up": "Criar conta",
        "auth.sign_out": "Sair",
        "auth.sign_out_all": "Sair de todos os dispositivos",
        "auth.email": "E-mail",
        "auth.password": "Senha",
        "auth.name": "Nome",
        "auth.no_account": "Ainda não tem conta?",
        "auth.have_account": "Já tem uma conta?",
        "auth.wrong": "E-mail ou senha incorretos. Confira e tente de novo.",
        "auth.throttled": "Muitas tentativas. Aguarde {seconds} segundos e tente de novo.",
        "auth.signup_closed": "Este espaço não aceita novas contas. Peça um convite a um administrador.",
        "auth.exists": "Já existe uma conta com este e-mail. Entre com ela.",
        "auth.password_rule": "No mínimo 10 caracteres.",
        "auth.session_ended": "Sua sessão terminou. Entre de novo; seu rascunho foi guardado.",
        "auth.pick_workspace": "Esta conta pertence a vários espaços. Escolha um:",
        "auth.or": "ou",
        "auth.with_google": "Entrar com o Google",
        "auth.with_provider": "Entrar com {provider}",
        "dash.new_chat": "Nova conversa",
        "dash.search": "Buscar nas conversas",
        "dash.active": "Ativas",
        "dash.archived": "Arquivadas",
        "dash.empty": "Nenhuma conversa ainda. Comece uma!",
        "dash.load_more": "Carregar mais",
        "dash.untitled": "Nova conversa",
        "dash.rename": "Renomear",
        "dash.archive": "Arquivar",
        "dash.unarchive": "Restaurar",
        "dash.delete": "Excluir",
        "dash.deleted": "Conversa excluída.",
        "dash.undo": "Desfazer",
        "dash.export": "Exportar",
        "dash.no_results": "Nada encontrado.",
        "dash.results": "Resultados da busca",
        "chat.placeholder": "Escreva uma mensagem…",
        "chat.send": "Enviar",
        "chat.stop": "Parar",
        "chat.regenerate": "Gerar de novo",
        "chat.edit": "Editar",
        "chat.copy": "Copiar",
        "chat.copied": "Copiado",
        "chat.retry": "Tentar de novo",
        "chat.save_resend": "Salvar e enviar",
        "chat.cancel": "Cancelar",
        "chat.versions": "Versões anteriores",
        "chat.earlier": "versão anterior",
        "chat.status.sending": "Enviando…",
        "chat.status.sent": "Enviada",
        "chat.status.delivered": "Entregue",
        "chat.status.error": "Não entregue",
        "chat.status.streaming": "Escrevendo…",
        "chat.status.stopped": "Interrompida por você",
        "chat.status.interrupted": "Interrompida",
        "chat.hint": "Enter envia, Shift+Enter quebra a linha, Esc para a resposta.",
        "chat.you": "Você",
        "chat.assistant": "Assistente",
        "chat.empty": "Pergunte qualquer coisa para começar.",
        "rt.reconnecting": "Reconectando…",
        "theme.label": "Tema",
        "theme.system": "Sistema",
        "theme.light": "Claro",
        "theme.dark": "Escuro",
        "lang.label": "Idioma",
        "error.title": "Algo deu errado",
        "error.back": "Voltar às conversas",
        "error.not_found": "Esta página não existe, ou não é sua.",
        "inbox.title": "Atendimento WhatsApp",
        "inbox.open": "Abertas",
        "inbox.pending": "Aguardando atendente",
        "inbox.closed": "Encerradas",
        "inbox.empty": "Nenhuma conversa aqui.",
        "inbox.pick": "Escolha uma conversa.",
        "inbox.reply": "Responder",
        "inbox.assign_me": "Atribuir a mim",
        "inbox.assigned": "Atribuída a",
        "inbox.close": "Encerrar",
        "inbox.reopen": "Reabrir",
        "inbox.bot_on": "Devolver ao robô",
        "inbox.bot_off": "Assumir do robô",
        "inbox.bot": "Robô",
        "inbox.customer": "Cliente",
        "inbox.agent": "Atendente",
        "inbox.delivery.pending": "Enviando…",
        "inbox.delivery.sent": "Enviada",
        "inbox.delivery.delivered": "Entregue",
        "inbox.delivery.read": "Lida",
        "inbox.delivery.failed": "Não entregue",
        "wa.title": "Números de WhatsApp",
        "wa.new": "Conectar um número",
        "wa.name": "Nome",
        "wa.create": "Criar",
        "wa.scan": "Escaneie este código no WhatsApp do celular: Configurações → Aparelhos conectados.",
        "wa.restart": "Reiniciar",
        "wa.stop": "Parar",
        "wa.remove": "Remover",
        "wa.empty": "Nenhum número de WhatsApp ainda.",
        "settings.title": "Configurações do espaço",
        "settings.brand": "Marca",
        "settings.brand_name": "Nome mostrado no app",
        "settings.logo": "Logo (URL https:// de uma imagem)",
        "settings.primary": "Cor principal",
        "settings.accent": "Cor de destaque",
        "settings.signup_open": "Qualquer pessoa com o link de cadastro pode criar uma conta",
        "settings.signup_link": "Link de cadastro",
        "settings.save": "Salvar",
        "settings.saved": "Salvo.",
        "settings.members": "Membros e papéis",
        "settings.role": "Papel",
        "settings.api_keys": "Chaves de API",
        "settings.key_name": "Nome da chave",
        "settings.create_key": "Criar chave",
        "settings.key_once": "Copie esta chave agora: ela não será mostrada de novo.",
        "settings.revoke": "Revogar",
        "settings.revoked": "Revogada",
        "settings.activity": "Atividade (últimos 30 dias)",
        "settings.messages": "Mensagens",
        "settings.active_users": "Membros ativos",
        "settings.sessions_created": "Conversas abertas",
        "settings.estimated_cost": "Custo estimado de IA",
        "settings.chart_title": "Mensagens por dia, até {peak}, com o sentimento médio do dia abaixo",
        "settings.chart_day": "{users} de pessoas, {replies} respostas",
        "settings.sentiment": "sentimento",
        "settings.legend_user": "De membros e clientes",
        "settings.legend_reply": "Respostas",
        "settings.legend_mood": "Sentimento médio (positivo acima da linha, negativo abaixo)",
        "settings.model": "Modelo",
        "settings.prompt_tokens": "Tokens de entrada",
        "settings.completion_tokens": "Tokens de saída",
        "settings.no_price": "sem preço definido",
        "settings.whatsapp_number": "Número de WhatsApp",
        "settings.received": "Recebidas",
        "settings.sent": "Enviadas",
        "hooks.title": "Webhooks",
        "hooks.add": "Enviar eventos para uma URL",
        "hooks.description": "Descrição",
        "hooks.events": "Eventos",
        "hooks.privacy": (
            "As conversas dos membros são enviadas como referências (ids, status, horários), nunca o texto; "
            "conversas de WhatsApp vão completas."
        ),
        "hooks.create": "Adicionar webhook",
        "hooks.secret_once": "Segredo de assinatura (Standard Webhooks), mostrado só agora:",
        "hooks.test": "Enviar um teste",
        "hooks.delete": "Remover",
        "hooks.event": "Evento",
        "hooks.status": "Situação",
        "hooks.attempts": "Tentativas",
        "hooks.answer": "Última resposta",
        "hooks.replay": "Reenviar",
        "hooks.none": "Nenhuma entrega ainda.",
        "hooks.pending": "Pendente",
        "hooks.delivered": "Entregue",
        "hooks.failed": "Falhou",
        "hooks.queued": "Na fila.",
        "settings.webhooks": "Webhooks",
        "settings.usage": "Uso de IA (últimos 30 dias)",
        "settings.day": "Dia",
        "settings.replies": "Respostas",
        "settings.tokens": "Tokens",
        "settings.assistants": "Assistentes",
        "settings.assistants_api": "Gerencie os assistentes pela API: /api/v1/assistants",
        "settings.default": "padrão",
    },
}


def babel_locale(language: str) -> str:
    return "pt_BR" if language == "pt-BR" else "en"


def pick_language(cookie: str | None, accept_language: str | None) -> str:
    """The switch's choice, else the first supported language the browser asks for."""
    if cookie in LANGUAGES:
        return cookie
    ranked: list[tuple[float, str]] = []
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((quality, tag.strip().lower()))
    for _, tag in sorted(ranked, key=lambda item: -item[0]):
        if tag.startswith("pt"):
            return "pt-BR"
        if tag.startswith("en"):
            return "en"
    return DEFAULT_LANGUAGE


class Translator:
    def __init__(self, language: str) -> None:
        self.language = language
        self.messages = MESSAGES[language]
        self.locale = babel_locale(language)

    def __call__(self, key: str, **values: object) -> str:
        text = self.messages.get(key) or MESSAGES["en"].get(key) or key
        return text.format(**values) if values else text

    def moment(self, value: datetime | None) -> str:
        if value is None:
            return ""
        return format_datetime(value, "short", locale=self.locale)

    def ago(self, value: datetime | None, now: datetime) -> str:
        if value is None:
            return ""
        return format_timedelta(value - now, add_direction=True, locale=self.locale)

    def number(self, value: float) -> str:
        return format_decimal(value, locale=self.locale)

    def catalog(self) -> dict[str, str]:
        """The strings the page script needs (sent as JSON in the page)."""
        return {
            k: v for k, v in self.messages.items() if k.split(".")[0] in {"chat", "dash", "rt", "auth", "inbox", "wa"}
        }
