-- Argo CD health of a damselfly.io ProxyRule: Accepted (valid), Applied (in use) and,
-- where peers report their rules (ruleSource API), Propagated (the peers run it).
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  return hs
end
local accepted, applied, propagated = nil, nil, nil
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Accepted" then accepted = c end
  if c.type == "Applied" then applied = c end
  if c.type == "Propagated" then propagated = c end
end
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = accepted.message
  return hs
end
if applied ~= nil then
  hs.message = applied.message
  if applied.status == "True" then
    hs.status = "Healthy"
    if propagated ~= nil and propagated.reason == "Propagating" then
      hs.status = "Progressing"
      hs.message = propagated.message
    end
  elseif applied.reason == "Disabled" then
    hs.status = "Suspended"
  elseif applied.reason == "ClusterStalled" then
    hs.status = "Degraded"
  end
end
return hs
