package apiserver

import (
	"context"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

type functionService struct {
	v1.UnimplementedFunctionServiceServer
	s *Server
}

// peerAddr is the caller's address: the REST client's for calls through
// the gateway, the gRPC peer's otherwise.
func peerAddr(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if ok && p.Addr != nil && !fromGateway(ctx) {
		return p.Addr.String()
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(peerMetadata); len(v) > 0 {
			return v[len(v)-1]
		}
	}
	if ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func (f *functionService) DeployFunction(ctx context.Context, req *v1.DeployFunctionRequest) (*v1.DeployFunctionResponse, error) {
	s := f.s
	src := []byte(req.Source)
	audit := []any{"audit", "deploy", "token", tokenFrom(ctx).Name, "peer", peerAddr(ctx), "function", clip(req.Name),
		"source_sha256", sourceSHA(src), "source_bytes", len(src), "dry_run", req.DryRun}
	manifest, err := deployManifest(req)
	if err == nil && !trigger.ValidFunctionName(req.Name) {
		err = invalidf("invalid function name %q: use [a-z0-9][a-z0-9_-]{0,62}", clip(req.Name))
	}
	if err == nil && len(src) > trigger.MaxSourceBytes {
		err = invalidf("source is %d bytes, larger than the limit of %d", len(src), trigger.MaxSourceBytes)
	}
	if err == nil && !utf8.Valid(src) {
		err = invalidf("source is not valid UTF-8")
	}
	if err != nil {
		s.log.Warn("function deploy refused", append(audit, "err", err)...)
		return nil, err
	}
	rec, unchanged, err := s.cfg.Functions.Deploy(ctx, req.Name, manifest, src, req.DryRun)
	if err != nil {
		s.log.Warn("function deploy refused", append(audit, "err", err)...)
		return nil, err
	}
	s.log.Info("function deployed", append(audit, "version", rec.Version, "unchanged", unchanged)...)
	return &v1.DeployFunctionResponse{Function: s.functionMessage(rec, false), DryRun: req.DryRun, Unchanged: unchanged}, nil
}

// deployManifest returns the manifest YAML of a deploy request: the given
// one, or one rendered from the structured fields.
func deployManifest(req *v1.DeployFunctionRequest) ([]byte, error) {
	structured := len(req.Triggers) > 0 || req.Limits != nil || req.Config != nil || req.Description != "" || req.Stream != "" || len(req.Sync) > 0
	if req.Manifest != "" {
		if structured {
			return nil, invalidf("give either manifest or the structured fields (triggers, limits, config, description, stream, sync), not both")
		}
		if len(req.Manifest) > trigger.MaxManifestBytes {
			return nil, invalidf("manifest is %d bytes, larger than the limit of %d", len(req.Manifest), trigger.MaxManifestBytes)
		}
		return []byte(req.Manifest), nil
	}
	m := map[string]any{}
	if req.Description != "" {
		m["description"] = req.Description
	}
	if req.Stream != "" {
		m["stream"] = req.Stream
	}
	if len(req.Sync) > 0 {
		m["sync"] = req.Sync
	}
	var trigs []any
	for i, t := range req.Triggers {
		switch k := t.GetKind().(type) {
		case *v1.Trigger_Mqtt:
			trigs = append(trigs, map[string]any{"mqtt": k.Mqtt})
		case *v1.Trigger_Timer:
			trigs = append(trigs, map[string]any{"timer": k.Timer})
		case *v1.Trigger_Cron:
			trigs = append(trigs, map[string]any{"cron": k.Cron})
		case *v1.Trigger_Http:
			h := map[string]any{}
			if k.Http != nil && len(k.Http.Methods) > 0 {
				h["methods"] = k.Http.Methods
			}
			trigs = append(trigs, map[string]any{"http": h})
		case *v1.Trigger_Stream:
			trigs = append(trigs, map[string]any{"stream": k.Stream})
		case *v1.Trigger_State:
			trigs = append(trigs, map[string]any{"state": map[string]any{"function": k.State.GetFunction(), "prefix": k.State.GetPrefix()}})
		case *v1.Trigger_Upload:
			u := map[string]any{"bucket": k.Upload.GetBucket()}
			if k.Upload.GetName() != "" {
				u["name"] = k.Upload.GetName()
			}
			trigs = append(trigs, map[string]any{"upload": u})
		default:
			return nil, invalidf("triggers[%d]: set one of mqtt, timer, cron, http, stream, state, upload", i)
		}
	}
	if len(trigs) > 0 {
		m["triggers"] = trigs
	}
	if l := req.Limits; l != nil {
		lm := map[string]any{}
		if l.Timeout != nil {
			d, err := durationOf(l.Timeout)
			if err != nil {
				return nil, err
			}
			lm["timeout"] = d.String()
		}
		for k, v := range map[string]int64{"max_steps": l.MaxSteps, "max_memory": l.MaxMemoryBytes, "max_result_bytes": l.MaxResultBytes,
			"max_effects": int64(l.MaxEffects), "max_effect_bytes": l.MaxEffectBytes, "max_call_depth": int64(l.MaxCallDepth)} {
			if v != 0 {
				lm[k] = v
			}
		}
		if len(lm) > 0 {
			m["limits"] = lm
		}
	}
	if req.Config != nil {
		m["config"] = req.Config.AsMap()
	}
	if len(m) == 0 {
		return []byte("{}\n"), nil
	}
	b, err := yaml.Marshal(m)
	if err != nil {
		return nil, invalidf("render manifest: %v", err)
	}
	return b, nil
}

func (f *functionService) GetFunction(ctx context.Context, req *v1.GetFunctionRequest) (*v1.Function, error) {
	if req.Version < 0 {
		return nil, invalidf("negative version")
	}
	rec, err := f.s.cfg.Store.GetFunction(ctx, req.Name, req.Version)
	if err != nil {
		return nil, err
	}
	return f.s.functionMessage(rec, true), nil
}

func (f *functionService) ListFunctions(ctx context.Context, _ *v1.ListFunctionsRequest) (*v1.ListFunctionsResponse, error) {
	// One function's source at a time: the list holds none.
	out := &v1.ListFunctionsResponse{}
	err := f.s.cfg.Store.EachFunction(ctx, func(r store.FunctionRecord) error {
		out.Functions = append(out.Functions, f.s.functionMessage(r, false))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (f *functionService) DeleteFunction(ctx context.Context, req *v1.DeleteFunctionRequest) (*v1.DeleteFunctionResponse, error) {
	n, err := f.s.cfg.Functions.Delete(ctx, req.Name)
	f.s.log.Info("function delete", "audit", "delete", "token", tokenFrom(ctx).Name, "peer", peerAddr(ctx), "function", clip(req.Name), "versions", n, "err", err)
	if err != nil {
		return nil, err
	}
	return &v1.DeleteFunctionResponse{DeletedVersions: int64(n)}, nil
}

func (f *functionService) ListFunctionVersions(ctx context.Context, req *v1.ListFunctionVersionsRequest) (*v1.ListFunctionVersionsResponse, error) {
	// One version's source at a time: the list holds none.
	out := &v1.ListFunctionVersionsResponse{}
	err := f.s.cfg.Store.EachVersion(ctx, req.Name, func(r store.FunctionRecord) error {
		out.Versions = append(out.Versions, f.s.functionMessage(r, false))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (f *functionService) RollbackFunction(ctx context.Context, req *v1.RollbackFunctionRequest) (*v1.RollbackFunctionResponse, error) {
	if req.Version < 0 {
		return nil, invalidf("negative version")
	}
	rec, err := f.s.cfg.Functions.Rollback(ctx, req.Name, req.Version)
	f.s.log.Info("function rollback", "audit", "rollback", "token", tokenFrom(ctx).Name, "peer", peerAddr(ctx), "function", clip(req.Name),
		"version", rec.Version, "err", err)
	if err != nil {
		return nil, err
	}
	return &v1.RollbackFunctionResponse{Function: f.s.functionMessage(rec, false)}, nil
}

func (f *functionService) InvokeFunction(ctx context.Context, req *v1.InvokeFunctionRequest) (*v1.InvokeFunctionResponse, error) {
	if !trigger.ValidFunctionName(req.Name) {
		return nil, invalidf("invalid function name %q", clip(req.Name))
	}
	ev, err := eventFrom(req.Event)
	if err != nil {
		return nil, err
	}
	ev.Trigger = "invoke"
	commit := req.DryRun != nil && !*req.DryRun
	inv, err := f.s.cfg.Functions.Invoke(ctx, req.Name, ev, commit, nil)
	if commit {
		f.s.log.Info("function invoke", "audit", "invoke", "token", tokenFrom(ctx).Name, "peer", peerAddr(ctx), "function", req.Name,
			"event", ev.ID, "err", err)
	}
	if err != nil {
		return nil, err
	}
	release, err := f.s.structSlot(ctx) // after the run: it holds none
	defer release()
	if err != nil {
		return nil, err
	}
	return invocationMessage(jsonOutFor(ctx), req.Name, inv), nil
}

// maxCaptures bounds the captures of an invoke event.
const maxCaptures = 64

func eventFrom(e *v1.Event) (*luavm.Event, error) {
	ev := &luavm.Event{}
	if e == nil {
		return ev, nil
	}
	if e.PayloadText != "" && len(e.Payload) > 0 {
		return nil, invalidf("event: give payload_text or payload, not both")
	}
	if e.Qos > 2 {
		return nil, invalidf("event: qos %d out of range [0, 2]", e.Qos)
	}
	if len(e.Captures) > maxCaptures {
		return nil, invalidf("event: more than %d captures", maxCaptures)
	}
	if strings.ContainsAny(e.Topic, "+#\x00") {
		return nil, invalidf("event: topic %q: no wildcards or NUL", clip(e.Topic))
	}
	ts, err := tsMS(e.Time)
	if err != nil {
		return nil, err
	}
	ev.ID, ev.Topic, ev.Captures, ev.TS, ev.QoS = e.Id, e.Topic, e.Captures, ts, byte(e.Qos)
	ev.Payload = e.Payload
	if e.PayloadText != "" {
		ev.Payload = []byte(e.PayloadText)
	}
	return ev, nil
}
