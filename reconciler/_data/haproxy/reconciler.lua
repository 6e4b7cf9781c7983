-- reconciler's traffic actions for HAProxy 2.6 (Lua 5.3), loaded by the
-- config reconciler writes (lua-load).  See reconciler/core/traffic.py.
--
-- reconciler_mirror: copies a request to green before a switch.  The
--   backend sets txn.reconciler_mirror from mirror.map ("PERCENT@ADDR:PORT")
--   and calls this action for PERCENT % of the requests only.
--   The action only queues the copy and returns, so the client's request goes
--   on to its server undelayed; sender tasks (core.httpclient is allowed in a
--   task) send the copies and drop green's answers.
-- reconciler_hold: while hold.map has an entry for the backend, the request
--   waits (core.msleep yields, so no thread is blocked), at most the entry's
--   value in milliseconds; then txn.reconciler_held_out is set and the config
--   answers 503.  A reload leaves the requests held so far in the old worker,
--   whose map the Runtime API no longer reaches: a held request is also
--   released when the map *file* (written after every change) no longer has
--   the entry it had while the request waited.

local hold_path = os.getenv("RECONCILER_HOLD_MAP")
local hold_map = Map.new(hold_path, Map._str)

-- The copies waiting for a sender, and the senders: a few tasks started with
-- HAProxy (core.register_task in the body), each sending one copy at a time
-- with core.httpclient() and dropping the answer.  A bounded number of
-- copies in flight, whatever green does: a slow green cannot pile up
-- connections or tasks in the router that serves blue.
local queue = {}
local MAX_QUEUED = 256
local SENDERS = 4

local function sender()
  local idle = 10
  while true do
    local job = table.remove(queue, 1)
    if job == nil then
      core.msleep(idle)
      if idle < 100 then idle = idle + 10 end
    else
      idle = 10
      local client = core.httpclient()
      client[job[1]](client, job[2])
    end
  end
end

for _ = 1, SENDERS do core.register_task(sender) end

local methods = {GET = "get", HEAD = "head", POST = "post", PUT = "put", DELETE = "delete"}
local skipped = {["content-length"] = true, ["connection"] = true, ["transfer-encoding"] = true,
                 ["keep-alive"] = true, ["upgrade"] = true, ["expect"] = true}

local function now_ms()
  local t = core.now()
  return t.sec * 1000 + t.usec // 1000
end

local function copy_headers(txn)
  local out = {}
  for name, values in pairs(txn.http:req_get_headers()) do
    if not skipped[name] then
      local list = {}
      for i = 0, #values do
        if values[i] ~= nil then list[#list + 1] = values[i] end
      end
      out[name] = list
    end
  end
  out["x-reconciler-mirror"] = {"1"}
  return out
end

core.register_action("reconciler_mirror", {"http-req"}, function(txn)
  local spec = txn:get_var("txn.reconciler_mirror")
  if spec == nil then return end
  local percent, target = string.match(spec, "^(%d+)@(%S+)$")
  percent = tonumber(percent)
  -- The config drew the share already (rand(100) below PERCENT): copy this one.
  if target == nil or percent == nil or percent <= 0 then return end
  local verb = methods[txn.sf:method()]
  if verb == nil then return end
  local request = {url = "http://" .. target .. txn.sf:pathq(), headers = copy_headers(txn), timeout = 10000}
  local length = tonumber(txn.sf:req_hdr("content-length") or "0") or 0
  if length > 0 then
    -- Only a body the router already holds whole is copied: never wait for one.
    local body = txn.sf:req_body()
    if body == nil or #body ~= length then return end
    request.body = body
  end
  -- Queued, not sent here: the request goes on to blue at once.  A full
  -- queue (green slower than the copies come) drops the copy, never delays blue.
  if #queue < MAX_QUEUED then queue[#queue + 1] = {verb, request} end
end, 0)

-- The hold map file as last read: at most every FILE_EVERY ms, for every held
-- request of this process (a small local file, written whole by a rename).
local FILE_EVERY = 250
local hold_file = {at = -FILE_EVERY, text = nil}

local function file_holds(backend)
  local now = now_ms()
  if now - hold_file.at >= FILE_EVERY then
    hold_file.at = now
    local f = io.open(hold_path, "r")
    hold_file.text = f and f:read("*a") or nil
    if f then f:close() end
  end
  if hold_file.text == nil then return nil end  -- unreadable: no verdict
  for line in string.gmatch(hold_file.text, "[^\n]+") do
    if string.match(line, "^(%S+)") == backend then return true end
  end
  return false
end

core.register_action("reconciler_hold", {"http-req"}, function(txn, backend)
  local value = hold_map:lookup(backend)
  if value == nil then return end
  local deadline = now_ms() + (tonumber(value) or 30000)
  -- The file is written just after the map changes: it counts as released only
  -- once this request saw the entry there, then saw it gone.
  local in_file = false
  while hold_map:lookup(backend) ~= nil do
    local held = file_holds(backend)
    if held then
      in_file = true
    elseif held == false and in_file then
      return
    end
    if now_ms() >= deadline then
      txn:set_var("txn.reconciler_held_out", 1)
      return
    end
    core.msleep(50)
  end
end, 1)
