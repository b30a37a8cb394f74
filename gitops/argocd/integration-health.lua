-- Argo CD health check for reconnect.dev/v1alpha1 Integration (Lua 5.1, as Argo CD runs it).
-- Progressing until the operator has observed the current spec; then Healthy when Ready is
-- True, Degraded when a connector's credential lost its connection or lacks permissions
-- (the Ready message names the connector, credential and account), and Progressing otherwise
-- (Pending: a credential is still being validated or does not exist yet).
local hs = {}

local function find_condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == wanted then
      return condition
    end
  end
  return nil
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the integration's status"
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to observe generation %d (status is for %d)",
    generation, status.observedGeneration)
  return hs
end

local ready = find_condition(status.conditions, "Ready")
if ready ~= nil and ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the Ready condition to reflect generation %d", generation)
  return hs
end

local message = ""
if ready ~= nil and ready.message ~= nil then
  message = ready.message
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
elseif status.phase == "ConnectionLost" or status.phase == "PermissionMismatch"
    or status.phase == "RotationRejected" or status.phase == "Misconfigured" then
  hs.status = "Degraded"
  if message == "" then
    message = status.phase
  end
  hs.message = message
else
  hs.status = "Progressing"
  if message == "" then
    message = "Waiting for its credentials to connect"
  end
  hs.message = message
end
return hs
