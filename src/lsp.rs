//! The LSP transport (tower-lsp-server): capabilities, document sync, settings, and the two
//! ways suggestions reach the editor — `textDocument/inlineCompletion` (ghost text, LSP 3.18)
//! and `textDocument/completion` (menu-only clients such as Helix).

use std::sync::Arc;

use serde_json::{json, Value};
use tower_lsp_server::jsonrpc::Result;
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, LanguageServer, LspService, Server};

use crate::document::{Position as DocPosition, PositionEncoding};
use crate::settings::Settings;
use crate::suggest::{Ask, Core, Suggestion};
use crate::trigger::is_word_char;

pub const ACCEPT_COMMAND: &str = "ghostline.accepted";

pub struct Backend {
    client: Client,
    pub core: Arc<Core>,
}

fn to_doc(p: Position) -> DocPosition {
    DocPosition::new(p.line, p.character)
}

fn to_lsp(p: DocPosition) -> Position {
    Position::new(p.line, p.character)
}

impl Backend {
    async fn warn(&self, warnings: Vec<String>) {
        for w in warnings {
            self.client.show_message(MessageType::WARNING, w).await;
        }
    }

    async fn suggestion(&self, uri: &Uri, pos: Position, ask: Ask) -> Option<Suggestion> {
        // No await before `suggest` takes its snapshot: messages are handled in the order they
        // arrive, so the request sees exactly the edits sent before it.
        // A bug must not take the editor's session down: a panic answers empty and is logged.
        let fut = std::panic::AssertUnwindSafe(self.core.suggest(uri.as_str(), to_doc(pos), ask));
        match futures_util::FutureExt::catch_unwind(fut).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!("{e}");
                None
            }
            Err(_) => {
                tracing::error!("internal error while completing {}; answered empty", uri.as_str());
                None
            }
        }
    }

    fn accept_command(id: &str, index: u32) -> Command {
        Command {
            title: "ghostline: accepted".into(),
            command: ACCEPT_COMMAND.into(),
            arguments: Some(vec![json!(id), json!(index)]),
        }
    }

    /// `textDocument/inlineCompletion`.
    pub async fn inline_completion(&self, params: InlineCompletionParams) -> Result<Option<InlineCompletionResponse>> {
        let tdp = params.text_document_position;
        let invoked = params.context.trigger_kind == InlineCompletionTriggerKind::INVOKED;
        tracing::debug!(
            "inlineCompletion {} {}:{} invoked={invoked}",
            tdp.text_document.uri.as_str(),
            tdp.position.line,
            tdp.position.character
        );
        let ask = Ask { invoked, n: if invoked { 3 } else { 1 }, debounce: !invoked };
        let Some(s) = self.suggestion(&tdp.text_document.uri, tdp.position, ask).await else { return Ok(None) };
        let at = to_lsp(s.position);
        let items = s
            .items
            .iter()
            .map(|(i, text)| InlineCompletionItem {
                insert_text: text.clone(),
                filter_text: None,
                range: Some(Range::new(at, at)),
                command: Some(Self::accept_command(&s.id, *i)),
                insert_text_format: None,
            })
            .collect();
        Ok(Some(InlineCompletionResponse::List(InlineCompletionList { items })))
    }

    /// `ghostline/stats`: the keystroke path's counters and the trigger decisions (for
    /// benchmarks and bug reports).
    pub async fn stats(&self) -> Result<Value> {
        let c = &self.core.counters;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let adaptive = self.core.settings().trigger == crate::settings::Trigger::Adaptive;
        let trigger = self.core.pacer.report(adaptive, get(&c.reused), get(&c.cache_hits));
        Ok(json!({
            "requests": get(&c.requests), "fetches": get(&c.fetches), "cache_hits": get(&c.cache_hits),
            "reused": get(&c.reused), "superseded": get(&c.superseded), "skipped": get(&c.skipped), "errors": get(&c.errors),
            "trigger": trigger,
        }))
    }

    /// A request the client sent that could not be read (`framing`): answered with an error.
    pub async fn invalid_message(&self, params: Value) -> Result<Value> {
        let why = params["error"].as_str().unwrap_or("ghostline could not read this request");
        tracing::warn!("{why}");
        Err(tower_lsp_server::jsonrpc::Error {
            code: tower_lsp_server::jsonrpc::ErrorCode::InvalidRequest,
            message: why.to_string().into(),
            data: None,
        })
    }

    /// `textDocument/didShowCompletion` (`{item}`: the inline item shown).
    pub async fn did_show_completion(&self, params: Value) {
        if let Some((id, index)) = item_ids(&params) {
            let lang = params["item"]["language"].as_str().unwrap_or("").to_string();
            self.core.shown(&id, index, &lang);
        }
    }

    /// `textDocument/didPartiallyAcceptCompletion` (`{item, acceptedLength}`).
    pub async fn did_partially_accept_completion(&self, params: Value) {
        let n = params["acceptedLength"].as_u64().or(params["accepted_length"].as_u64());
        if let (Some((id, _)), Some(n)) = (item_ids(&params), n) {
            self.core.partially_accepted(&id, n as usize);
        }
    }
}

/// The completion id and candidate index of an item, from its `ghostline.accepted` command.
fn item_ids(params: &Value) -> Option<(String, u32)> {
    let args = &params["item"]["command"]["arguments"];
    let id = args[0].as_str().or(params["completionId"].as_str())?.to_string();
    Some((id, args[1].as_u64().unwrap_or(0) as u32))
}

/// `$/ghostline/status`: the server's state for plugins that show one.
enum StatusNotification {}

impl tower_lsp_server::ls_types::notification::Notification for StatusNotification {
    type Params = Value;
    const METHOD: &'static str = "$/ghostline/status";
}

fn server_capabilities(encoding: PositionEncoding) -> ServerCapabilities {
    let mut caps = ServerCapabilities {
        position_encoding: Some(match encoding {
            PositionEncoding::Utf8 => PositionEncodingKind::UTF8,
            PositionEncoding::Utf16 => PositionEncodingKind::UTF16,
        }),
        text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
            open_close: Some(true),
            change: Some(TextDocumentSyncKind::INCREMENTAL),
            ..Default::default()
        })),
        completion_provider: Some(CompletionOptions {
            // Helix asks on these and after its idle timeout; together that is often enough.
            trigger_characters: Some(
                [".", "(", "[", "{", ",", ":", "=", " ", ">", "\n"].iter().map(|s| s.to_string()).collect(),
            ),
            resolve_provider: Some(false),
            ..Default::default()
        }),
        execute_command_provider: Some(ExecuteCommandOptions {
            commands: vec![ACCEPT_COMMAND.into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    caps.inline_completion_provider = Some(OneOf::Left(true));
    caps
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let offered =
            params.capabilities.general.as_ref().and_then(|g| g.position_encodings.clone()).unwrap_or_default();
        let encoding = if offered.contains(&PositionEncodingKind::UTF8) {
            PositionEncoding::Utf8
        } else {
            PositionEncoding::Utf16
        };
        self.core.documents.set_encoding(encoding);
        #[allow(deprecated)]
        let root = params
            .workspace_folders
            .as_ref()
            .and_then(|f| f.first().map(|f| f.uri.clone()))
            .or(params.root_uri.clone())
            .and_then(|u| u.to_file_path().map(|p| p.into_owned()));
        self.core.documents.set_root(root);
        self.core.telemetry.set_editor(params.client_info.as_ref().map(|c| c.name.clone()));
        if let Some(opts) = &params.initialization_options {
            let w = self.core.update_settings(opts);
            self.warn(w).await;
        }
        Ok(InitializeResult {
            capabilities: server_capabilities(encoding),
            server_info: Some(ServerInfo { name: "ghostline".into(), version: Some(env!("CARGO_PKG_VERSION").into()) }),
            ..Default::default()
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let s = self.core.settings();
        tracing::info!("ghostline {} using {}", env!("CARGO_PKG_VERSION"), s.server_url);
        // Events an earlier session could not deliver (it was ended right after `shutdown`, or
        // the server was down) go out now.
        self.core.telemetry.resume(s.telemetry);
    }

    async fn shutdown(&self) -> Result<()> {
        self.core.close_telemetry().await;
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let d = params.text_document;
        tracing::debug!("open {} ({})", d.uri.as_str(), d.language_id);
        self.core.open(d.uri.as_str(), &d.language_id, d.version, &d.text);
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        tracing::trace!("change {} v{}", params.text_document.uri.as_str(), params.text_document.version);
        let changes: Vec<_> = params
            .content_changes
            .into_iter()
            .map(|c| (c.range.map(|r| (to_doc(r.start), to_doc(r.end))), c.text))
            .collect();
        let uri = params.text_document.uri;
        if !self.core.change(uri.as_str(), params.text_document.version, &changes) {
            tracing::warn!("didChange for a document that is not open: {}", uri.as_str());
        }
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        self.core.close(params.text_document.uri.as_str());
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        let v = match params.settings.get("ghostline") {
            Some(inner) => inner.clone(),
            None => params.settings,
        };
        let w = self.core.update_settings(&v);
        self.warn(w).await;
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let tdp = params.text_document_position;
        let uri = tdp.text_document.uri;
        let ask = Ask { invoked: false, n: 1, debounce: false };
        let Some(s) = self.suggestion(&uri, tdp.position, ask).await else { return Ok(None) };
        // The item replaces the word before the cursor, so the menu's filter matches it.
        let word = self
            .core
            .documents
            .text_before(uri.as_str(), to_doc(tdp.position))
            .map(|b| {
                b.chars()
                    .rev()
                    .take_while(|c| is_word_char(*c))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<String>()
            })
            .unwrap_or_default();
        let end = to_lsp(s.position);
        let start_char = end.character.saturating_sub(self.core.documents.units(&word));
        let start = Position::new(end.line, start_char);
        let items = s
            .items
            .iter()
            .map(|(i, text)| {
                let full = format!("{word}{text}");
                let first = full.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
                let label: String = if first.chars().count() > 60 {
                    format!("{}…", first.chars().take(60).collect::<String>())
                } else {
                    first.clone()
                };
                CompletionItem {
                    label,
                    kind: Some(CompletionItemKind::TEXT),
                    detail: Some("ghostline".into()),
                    documentation: Some(Documentation::MarkupContent(MarkupContent {
                        kind: MarkupKind::Markdown,
                        value: format!(
                            "```{}\n{}\n```",
                            self.core.documents.language_of(uri.as_str()).unwrap_or_default(),
                            full
                        ),
                    })),
                    filter_text: Some(first),
                    sort_text: Some(format!("0{i}")),
                    preselect: Some(*i == 0),
                    text_edit: Some(CompletionTextEdit::Edit(TextEdit {
                        range: Range::new(start, end),
                        new_text: full,
                    })),
                    insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                    command: Some(Self::accept_command(&s.id, *i)),
                    ..Default::default()
                }
            })
            .collect();
        Ok(Some(CompletionResponse::List(CompletionList { is_incomplete: true, items })))
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<LSPAny>> {
        if params.command == ACCEPT_COMMAND {
            let id = params.arguments.first().and_then(|a| a.as_str());
            let index = params.arguments.get(1).and_then(|a| a.as_u64()).unwrap_or(0) as u32;
            match id {
                Some(id) => self.core.accepted(id, index),
                None => {
                    return Err(tower_lsp_server::jsonrpc::Error::invalid_params(
                        "ghostline.accepted takes [completion id, candidate index]",
                    ))
                }
            }
            return Ok(None);
        }
        Err(tower_lsp_server::jsonrpc::Error::invalid_params(format!("unknown command {}", params.command)))
    }
}

/// Serves LSP on stdio until the client exits.
pub async fn serve(settings: Settings) {
    serve_io(Core::new(settings), tokio::io::stdin(), tokio::io::stdout()).await;
}

/// Serves LSP for `core` on a byte stream from the client and one to it (stdio, or pipes in
/// tests), until the client exits or its stream ends. The client's bytes go through
/// `framing::pump` first, so that no message can end the session.
pub async fn serve_io<I, O>(core: Arc<Core>, input: I, output: O)
where
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite,
{
    let keep = core.clone();
    let (service, socket) = LspService::build(|client| {
        // Notices about the server reach the user once per change of state.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::link::Notice>();
        core.set_notices(tx);
        let c = client.clone();
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                if n.show {
                    let level = if n.state == "ready" { MessageType::INFO } else { MessageType::WARNING };
                    c.show_message(level, &n.message).await;
                }
                c.send_notification::<StatusNotification>(json!({"state": n.state, "message": n.message})).await;
            }
        });
        Backend { client, core }
    })
    .custom_method("textDocument/inlineCompletion", Backend::inline_completion)
    .custom_method("ghostline/stats", Backend::stats)
    .custom_method("textDocument/didShowCompletion", Backend::did_show_completion)
    .custom_method("textDocument/didPartiallyAcceptCompletion", Backend::did_partially_accept_completion)
    .custom_method(crate::framing::INVALID_METHOD, Backend::invalid_message)
    .finish();
    let (reader, writer) = tokio::io::duplex(256 << 10);
    let pump = crate::framing::pump(input, writer);
    // Requests wait on the network; a generous limit keeps them from holding up didChange.
    let serve = Server::new(reader, output, socket).concurrency_level(64).serve(service);
    tokio::pin!(pump, serve);
    // The pump ends with the client's stream and closes the server's; the server ends on `exit`.
    let served = tokio::select! {
        _ = &mut serve => true,
        _ = &mut pump => false,
    };
    if !served {
        serve.await;
    }
    // The editor went away without a shutdown: still send or spool what is queued.
    keep.close_telemetry().await;
}

#[cfg(test)]
mod fuzz;
