-- reconciler's traffic actions for HAProxy 2.6 (Lua 5.3), loaded by the
-- config reconciler writes (lua-load).  See reconciler/core/traffic.py.
--
-- reconciler_mirror: copies a request to green before a switch.  The
--   backend sets txn.reconciler_mirror from mirror.map ("PERCENT@ADDR:PORT").
--   The copy is sent by a task (core.register_task is allowed in an action;
--   core.httpclient in a task), so the action returns at once and the client's
--   request goes on to its server undelayed; green's answer is read and dropped.
-- reconciler_hold: while hold.map has an entry for the backend, the request
--   waits (core.msleep yields, so no thread is blocked), at most the entry's
--   value in milliseconds; then txn.reconciler_held_out is set and the config
--   answers 503.

local hold_map = Map.new(os.getenv("RECONCILER_HOLD_MAP"), Map._str)

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
  if target == nil or percent == nil or percent <= 0 or math.random(100) > percent then return end
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
  core.register_task(function()
    local client = core.httpclient()
    client[verb](client, request)
  end)
end, 0)

core.register_action("reconciler_hold", {"http-req"}, function(txn, backend)
  local value = hold_map:lookup(backend)
  if value == nil then return end
  local deadline = now_ms() + (tonumber(value) or 30000)
  while hold_map:lookup(backend) ~= nil do
    if now_ms() >= deadline then
      txn:set_var("txn.reconciler_held_out", 1)
      return
    end
    core.msleep(50)
  end
end, 1)
