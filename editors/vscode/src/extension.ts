// ghostline for VS Code: starts the `ghostline` language server for every file and shows its
// LSP 3.18 inline completions as ghost text. The API key lives in SecretStorage, never in
// settings.json; a status bar item shows ready / working / error and toggles suggestions.
import * as vscode from 'vscode';
import { LanguageClient, LanguageClientOptions, ServerOptions } from 'vscode-languageclient/node';

const KEY_SECRET = 'ghostline.apiKey';
let client: LanguageClient | undefined;
let status: vscode.StatusBarItem;

// A value the user set (any scope), else undefined: the language server's own default then
// applies (`debounceMs` sent alone would select the fixed debounce).
function userSet<T>(cfg: vscode.WorkspaceConfiguration, key: string): T | undefined {
  const i = cfg.inspect<T>(key);
  return i?.workspaceFolderValue ?? i?.workspaceValue ?? i?.globalValue;
}

function settingsObject(apiKey: string | undefined) {
  const cfg = vscode.workspace.getConfiguration('ghostline');
  return {
    serverUrl: cfg.get<string>('serverUrl'),
    trigger: userSet<string>(cfg, 'trigger'),
    debounceMs: userSet<number>(cfg, 'debounceMs'),
    telemetry: cfg.get<boolean>('telemetry'),
    enable: cfg.get<boolean>('enable'),
    apiKey,
  };
}

function enabledFor(doc: vscode.TextDocument): boolean {
  return vscode.workspace.getConfiguration('ghostline', { languageId: doc.languageId }).get<boolean>('enable', true);
}

function showState(state: string, message?: string) {
  const icons: Record<string, string> = { ready: '$(check)', working: '$(sync~spin)', error: '$(error)', unauthorized: '$(key)', limited: '$(watch)', off: '$(circle-slash)' };
  status.text = `${icons[state] ?? '$(question)'} ghostline`;
  status.tooltip = message ? `ghostline: ${message}` : `ghostline: ${state} (click to toggle)`;
}

async function start(context: vscode.ExtensionContext) {
  const cfg = vscode.workspace.getConfiguration('ghostline');
  const command = cfg.get<string>('path') || 'ghostline';
  const apiKey = await context.secrets.get(KEY_SECRET);
  const serverOptions: ServerOptions = { command, args: ['--stdio'] };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
    initializationOptions: settingsObject(apiKey),
    middleware: {
      provideInlineCompletionItems: async (document, position, ctx, token, next) => {
        if (!enabledFor(document)) {
          return null;
        }
        showState('working');
        try {
          return await next(document, position, ctx, token);
        } finally {
          showState('ready');
        }
      },
      // Menu completions are for editors without ghost text; VS Code shows the inline ones.
      provideCompletionItem: () => null,
    },
  };
  client = new LanguageClient('ghostline', 'ghostline', serverOptions, clientOptions);
  client.onNotification('$/ghostline/status', (p: { state: string; message?: string }) => showState(p.state, p.message));
  try {
    await client.start();
    showState('ready');
  } catch (e) {
    showState('error', `cannot start ${command}: ${e}`);
    vscode.window.showErrorMessage(`ghostline: cannot start the language server (${command}). Set ghostline.path or put ghostline on PATH.`);
  }
}

async function pushSettings(context: vscode.ExtensionContext) {
  if (client) {
    const apiKey = await context.secrets.get(KEY_SECRET);
    await client.sendNotification('workspace/didChangeConfiguration', { settings: { ghostline: settingsObject(apiKey) } });
  }
}

export async function activate(context: vscode.ExtensionContext) {
  status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  status.command = 'ghostline.toggle';
  showState('working', 'starting');
  status.show();
  context.subscriptions.push(
    status,
    vscode.commands.registerCommand('ghostline.setApiKey', async () => {
      const key = await vscode.window.showInputBox({ prompt: 'ghostline API key (stored in VS Code SecretStorage)', password: true, ignoreFocusOut: true });
      if (key === undefined) {
        return;
      }
      if (key.trim() === '') {
        await context.secrets.delete(KEY_SECRET);
      } else {
        await context.secrets.store(KEY_SECRET, key.trim());
      }
      await pushSettings(context);
    }),
    vscode.commands.registerCommand('ghostline.toggle', async () => {
      const cfg = vscode.workspace.getConfiguration('ghostline');
      const on = !cfg.get<boolean>('enable', true);
      await cfg.update('enable', on, vscode.ConfigurationTarget.Global);
      showState(on ? 'ready' : 'off');
    }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (e.affectsConfiguration('ghostline.path') && client) {
        await client.stop();
        await start(context);
      } else if (e.affectsConfiguration('ghostline')) {
        await pushSettings(context);
      }
    }),
  );
  await start(context);
}

export async function deactivate() {
  if (client) {
    await client.stop();
  }
}
