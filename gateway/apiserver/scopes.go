package apiserver

import (
	"sort"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

// methodScopes is the scope each gRPC method needs. A method not listed is
// refused (see authorize); the tests check that every method of every
// service is listed.
var methodScopes = map[string]Scope{
	v1.FunctionService_DeployFunction_FullMethodName:       ScopeAdmin,
	v1.FunctionService_GetFunction_FullMethodName:          ScopeRead,
	v1.FunctionService_ListFunctions_FullMethodName:        ScopeRead,
	v1.FunctionService_DeleteFunction_FullMethodName:       ScopeAdmin,
	v1.FunctionService_ListFunctionVersions_FullMethodName: ScopeRead,
	v1.FunctionService_RollbackFunction_FullMethodName:     ScopeAdmin,
	v1.FunctionService_InvokeFunction_FullMethodName:       ScopeAdmin,

	v1.RecordService_QueryRecords_FullMethodName:     ScopeRead,
	v1.RecordService_AggregateRecords_FullMethodName: ScopeRead,

	v1.StateService_GetState_FullMethodName:    ScopeRead,
	v1.StateService_ListState_FullMethodName:   ScopeRead,
	v1.StateService_PutState_FullMethodName:    ScopeAdmin,
	v1.StateService_DeleteState_FullMethodName: ScopeAdmin,

	v1.LogService_ListLogs_FullMethodName:   ScopeRead,
	v1.LogService_FollowLogs_FullMethodName: ScopeRead,

	v1.DeadLetterService_ListDeadLetters_FullMethodName:   ScopeRead,
	v1.DeadLetterService_ReplayDeadLetters_FullMethodName: ScopeAdmin,
	v1.DeadLetterService_PurgeDeadLetters_FullMethodName:  ScopeAdmin,

	v1.UsageService_GetUsage_FullMethodName: ScopeRead,

	v1.StatusService_GetSyncStatus_FullMethodName:   ScopeRead,
	v1.StatusService_GetSystemStatus_FullMethodName: ScopeRead,
}

// MethodScope returns the scope method (a full gRPC method name) needs,
// and whether it is a known method.
func MethodScope(method string) (Scope, bool) {
	s, ok := methodScopes[method]
	return s, ok
}

// ScopedMethods returns every method that has a scope, sorted.
func ScopedMethods() []string {
	out := make([]string, 0, len(methodScopes))
	for m := range methodScopes {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}
