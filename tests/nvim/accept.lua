-- Driven by tests/editor_nvim.rs: headless Neovim with the plugin, the real LSP and server.
-- Types in insert mode with nvim_input, waits for the ghost-text extmark, then accepts with the
-- mode given in GHOSTLINE_TEST_MODE (full: Tab; word: Alt-w; dismiss: Ctrl-] then Escape),
-- and writes what happened as JSON to GHOSTLINE_TEST_OUT.
local out = vim.env.GHOSTLINE_TEST_OUT
local mode = vim.env.GHOSTLINE_TEST_MODE or 'full'
local typed = vim.env.GHOSTLINE_TEST_TYPE or ' '
local result = { mode = mode }

local function finish(fields)
  for k, v in pairs(fields or {}) do
    result[k] = v
  end
  local f = io.open(out, 'w')
  f:write(vim.fn.json_encode(result))
  f:close()
  vim.cmd('qa!')
end

local ok, ghostline = pcall(require, 'ghostline')
if not ok then
  finish({ error = 'require: ' .. tostring(ghostline) })
  return
end
ghostline.setup({ cmd = { vim.env.GHOSTLINE_BIN }, server_url = vim.env.GHOSTLINE_SERVER_URL, settings = { debounceMs = 20, requestTimeoutMs = 30000 } })
vim.cmd('filetype on')
vim.cmd('edit ' .. vim.fn.fnameescape(vim.env.GHOSTLINE_TEST_FILE))
local ns = vim.api.nvim_create_namespace('ghostline')
local line = tonumber(vim.env.GHOSTLINE_TEST_LINE)

local function poll(pred, timeout_ms, then_fn, what)
  local waited = 0
  local timer = vim.loop.new_timer()
  timer:start(50, 50, vim.schedule_wrap(function()
    waited = waited + 50
    if pred() then
      timer:stop()
      then_fn()
    elseif waited > timeout_ms then
      timer:stop()
      finish({ error = 'timed out waiting for ' .. what, status = ghostline.status() })
    end
  end))
end

poll(function()
  return #vim.lsp.get_active_clients() > 0 and vim.lsp.buf_is_attached(0, vim.lsp.get_active_clients()[1].id)
end, 20000, function()
  vim.api.nvim_win_set_cursor(0, { line, 0 })
  vim.api.nvim_input('A' .. typed)
  poll(function()
    return #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {}) > 0
  end, 60000, function()
    local item = ghostline.current()
    result.suggestion = item and item.insertText or ''
    result.line_before = vim.api.nvim_buf_get_lines(0, line - 1, line, false)[1]
    local keys = ({ full = '<Tab>', word = '<M-w>', dismiss = '<C-]>' })[mode]
    vim.api.nvim_input(keys)
    vim.defer_fn(function()
      result.line_after = vim.api.nvim_buf_get_lines(0, line - 1, line, false)[1]
      result.extmarks_after = #vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {})
      result.status = ghostline.status()
      vim.api.nvim_input('<Esc>')
      -- Give the LSP time to send its telemetry batch (every 3 s) before quitting.
      vim.defer_fn(function() finish() end, tonumber(vim.env.GHOSTLINE_TEST_LINGER_MS or '3500'))
    end, 400)
  end, 'the ghost text')
end, 'the language server')
