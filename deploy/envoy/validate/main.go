// envoy-validate: checks an Envoy bootstrap against Envoy's own API, without Envoy.
//
// Reads the bootstrap as JSON on stdin (tests/unit/test_deploy_envoy.py converts
// deploy/envoy/envoy.yaml), decodes it strictly with protojson into
// envoy.config.bootstrap.v3.Bootstrap (unknown fields and unknown typed_config
// types are errors), then runs the protoc-gen-validate rules of every message,
// including the ones packed in typed_config Any fields. Exit 0 when valid.
//
// Built by deploy/install-validators.sh into ~/.cache/heatmap/bin.
package main

import (
	"fmt"
	"io"
	"os"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

type validator interface{ ValidateAll() error }

// check validates msg and, recursively, every message it holds (Any unpacked).
func check(msg protoreflect.Message, path string, problems *[]string) {
	if v, ok := msg.Interface().(validator); ok {
		if err := v.ValidateAll(); err != nil {
			*problems = append(*problems, fmt.Sprintf("%s: %v", path, err))
		}
	}
	if anyMsg, ok := msg.Interface().(*anypb.Any); ok {
		inner, err := anyMsg.UnmarshalNew()
		if err != nil {
			*problems = append(*problems, fmt.Sprintf("%s: %v", path, err))
			return
		}
		check(inner.ProtoReflect(), path+"<"+string(inner.ProtoReflect().Descriptor().FullName())+">", problems)
		return
	}
	msg.Range(func(fd protoreflect.FieldDescriptor, value protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		name := path + "." + string(fd.Name())
		switch {
		case fd.IsList():
			list := value.List()
			for i := 0; i < list.Len(); i++ {
				check(list.Get(i).Message(), fmt.Sprintf("%s[%d]", name, i), problems)
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				value.Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
					check(v.Message(), fmt.Sprintf("%s[%v]", name, k.Interface()), problems)
					return true
				})
			}
		default:
			check(value.Message(), name, problems)
		}
		return true
	})
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var bootstrap bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(raw, &bootstrap); err != nil {
		fmt.Fprintln(os.Stderr, "decode:", err)
		os.Exit(1)
	}
	var problems []string
	check(proto.Clone(&bootstrap).ProtoReflect(), "bootstrap", &problems)
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, p)
	}
	if len(problems) > 0 {
		os.Exit(1)
	}
	fmt.Println("ok")
}
