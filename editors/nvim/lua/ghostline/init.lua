-- ghostline for Neovim (0.7.2 and later): starts the `ghostline` language server for the
-- configured filetypes and shows its inline suggestions as ghost text.
--
--   require('ghostline').setup({ server_url = 'http://127.0.0.1:8484' })
--
-- The first line of a suggestion is virtual text at the cursor, the rest virtual lines below.
-- Tab accepts (a normal Tab when nothing is shown); Alt-w / Alt-l accept a word / a line;
-- Alt-] / Alt-[ cycle candidates; Ctrl-] dismisses; Alt-\ asks explicitly.

local M = {}

local ns = vim.api.nvim_create_namespace('ghostline')

M.config = {
  cmd = nil, -- default: { 'ghostline' } (or $GHOSTLINE_BIN)
  server_url = nil, -- default: $GHOSTLINE_SERVER_URL or http://127.0.0.1:8484
  api_key = nil, -- default: $GHOSTLINE_API_KEY
  filetypes = {
    'python', 'rust', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'java', 'c', 'cpp',
    'lua', 'sh',
  },
  settings = {}, -- more of the LSP settings object (debounceMs, multiline, telemetry, ...)
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-w>',
    accept_line = '<M-l>',
    next = '<M-]>',
    prev = '<M-[>',
    dismiss = '<C-]>',
    trigger = '<M-\\>',
  },
}

-- The suggestion on screen: buffer, position, items, which one is shown.
local state = { buf = nil, row = nil, col = nil, items = {}, index = 1, request = nil, client_id = nil, status = 'starting', message = '' }

local function client()
  return state.client_id and vim.lsp.get_client_by_id(state.client_id) or nil
end

function M.clear()
  if state.buf and vim.api.nvim_buf_is_valid(state.buf) then
    vim.api.nvim_buf_clear_namespace(state.buf, ns, 0, -1)
  end
  state.items, state.index, state.buf = {}, 1, nil
end

local function split_lines(text)
  return vim.split(text, '\n', { plain = true })
end

local function render()
  if not state.buf or not vim.api.nvim_buf_is_valid(state.buf) then
    return
  end
  vim.api.nvim_buf_clear_namespace(state.buf, ns, 0, -1)
  local item = state.items[state.index]
  if not item then
    return
  end
  local lines = split_lines(item.insertText)
  local opts = {
    virt_text = { { lines[1], 'Comment' } },
    virt_text_pos = vim.fn.has('nvim-0.10') == 1 and 'inline' or 'overlay',
    hl_mode = 'combine',
  }
  if #lines > 1 then
    local rest = {}
    for i = 2, #lines do
      table.insert(rest, { { lines[i], 'Comment' } })
    end
    opts.virt_lines = rest
  end
  pcall(vim.api.nvim_buf_set_extmark, state.buf, ns, state.row, state.col, opts)
end

--- Whether a suggestion is on screen.
function M.visible()
  return state.items[state.index] ~= nil
end

--- The suggestion on screen, if any (for tests and statuslines).
function M.current()
  return state.items[state.index]
end

local function cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2]
end

--- Asks the server for suggestions at the cursor (automatic unless `invoked`).
function M.request(invoked)
  local c = client()
  if not c then
    return
  end
  local buf = vim.api.nvim_get_current_buf()
  if not vim.lsp.buf_is_attached(buf, c.id) then
    return
  end
  if state.request then
    pcall(c.cancel_request, state.request)
    state.request = nil
  end
  local params = vim.lsp.util.make_position_params()
  params.context = { triggerKind = invoked and 1 or 2 }
  local row, col = cursor()
  local ok, id = c.request('textDocument/inlineCompletion', params, function(err, result)
    state.request = nil
    local r, k = cursor()
    if err or not result or r ~= row or k ~= col or vim.api.nvim_get_current_buf() ~= buf then
      return
    end
    local items = result.items or result
    if type(items) ~= 'table' or #items == 0 then
      M.clear()
      return
    end
    state.buf, state.row, state.col, state.items, state.index = buf, row, col, items, 1
    render()
    pcall(c.notify, 'textDocument/didShowCompletion', { item = items[1] })
  end, buf)
  if ok then
    state.request = id
  end
end

local function insert_at_cursor(text)
  local row, col = cursor()
  local lines = split_lines(text)
  vim.api.nvim_buf_set_text(0, row, col, row, col, lines)
  local last_row = row + #lines - 1
  local last_col = (#lines == 1) and (col + #lines[1]) or #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { last_row + 1, last_col })
end

--- Accepts the whole suggestion (`part` = 'word' or 'line' for a part of it).
function M.accept(part)
  local item = state.items[state.index]
  if not item then
    return false
  end
  local text = item.insertText
  local taken = text
  if part == 'word' then
    taken = text:match('^%s*[%w_]+') or text:match('^%s*[^%w_%s]+') or text
  elseif part == 'line' then
    taken = text:match('^[^\n]*\n?') or text
  end
  M.clear()
  insert_at_cursor(taken)
  local c = client()
  if c then
    if #taken >= #text and item.command then
      c.request('workspace/executeCommand', { command = item.command.command, arguments = item.command.arguments }, function() end)
    else
      c.notify('textDocument/didPartiallyAcceptCompletion', { item = item, acceptedLength = vim.fn.strchars(taken) })
    end
  end
  return true
end

function M.cycle(step)
  if #state.items > 1 then
    state.index = (state.index - 1 + step) % #state.items + 1
    render()
  end
end

--- `:GhostlineStatus`: binary, server state and key.
function M.status()
  local cfg = M.config
  local bin = (cfg.cmd or { vim.env.GHOSTLINE_BIN or 'ghostline' })[1]
  local lines = {
    'ghostline binary: ' .. (vim.fn.executable(bin) == 1 and vim.fn.exepath(bin) or (bin .. ' (not found)')),
    'server: ' .. (cfg.server_url or vim.env.GHOSTLINE_SERVER_URL or 'http://127.0.0.1:8484') .. ' — ' .. state.status .. (state.message ~= '' and (': ' .. state.message) or ''),
    'API key: ' .. ((cfg.api_key or vim.env.GHOSTLINE_API_KEY) and 'set' or 'not set'),
    'language server: ' .. (client() and 'running' or 'not running'),
  }
  return lines
end

local function map(lhs, fn, fallback)
  if not lhs or lhs == '' then
    return
  end
  vim.keymap.set('i', lhs, function()
    if not fn() and fallback then
      vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(lhs, true, false, true), 'n', false)
    end
  end, { desc = 'ghostline', silent = true })
end

function M.start(buf)
  local cfg = M.config
  if not state.client_id or not client() then
    local settings = vim.tbl_extend('force', { serverUrl = cfg.server_url or vim.env.GHOSTLINE_SERVER_URL, apiKey = cfg.api_key or vim.env.GHOSTLINE_API_KEY }, cfg.settings)
    state.client_id = vim.lsp.start_client({
      name = 'ghostline',
      cmd = cfg.cmd or { vim.env.GHOSTLINE_BIN or 'ghostline' },
      root_dir = vim.fn.getcwd(),
      init_options = settings,
      handlers = {
        ['$/ghostline/status'] = function(_, params)
          state.status, state.message = params.state or '?', params.message or ''
        end,
      },
    })
  end
  if state.client_id then
    vim.lsp.buf_attach_client(buf, state.client_id)
  end
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend('force', M.config, opts or {})
  local km = M.config.keymaps
  local group = vim.api.nvim_create_augroup('ghostline', { clear = true })
  vim.api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = M.config.filetypes,
    callback = function(args)
      M.start(args.buf)
    end,
  })
  vim.api.nvim_create_autocmd({ 'TextChangedI', 'TextChangedP' }, {
    group = group,
    callback = function()
      M.request(false)
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, { group = group, callback = M.clear })
  vim.api.nvim_create_autocmd('CursorMovedI', {
    group = group,
    callback = function()
      local r, c = cursor()
      if state.buf and (r ~= state.row or c ~= state.col) then
        M.clear()
      end
    end,
  })
  map(km.accept, function() return M.accept() end, true)
  map(km.accept_word, function() return M.accept('word') end, true)
  map(km.accept_line, function() return M.accept('line') end, true)
  map(km.next, function() M.cycle(1) return true end)
  map(km.prev, function() M.cycle(-1) return true end)
  map(km.dismiss, function()
    local shown = M.visible()
    M.clear()
    return shown
  end, true)
  map(km.trigger, function() M.request(true) return true end)
  vim.api.nvim_create_user_command('GhostlineStatus', function()
    print(table.concat(M.status(), '\n'))
  end, {})
  -- Buffers already open when setup runs.
  for _, b in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(b) and vim.tbl_contains(M.config.filetypes, vim.bo[b].filetype) then
      M.start(b)
    end
  end
end

return M
