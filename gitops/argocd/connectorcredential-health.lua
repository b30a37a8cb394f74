-- Argo CD health check for reconnect.dev/v1alpha1 ConnectorCredential (Lua 5.1, as Argo CD runs it).
-- Progressing until the operator has observed the current spec; then Healthy when Ready is
-- True, Degraded when a person must act (connection lost, permissions lacking, a rotation
-- rejected, a spec or Secret that cannot work; the Ready message says what and who), and
-- Progressing otherwise (Pending: first validation, rotation in flight).
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
  hs.message = "Waiting for the operator to report the credential's status"
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
    message = "Validating the credential"
  end
  hs.message = message
end
return hs
