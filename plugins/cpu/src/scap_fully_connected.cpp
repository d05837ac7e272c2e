#include "scap_fully_connected.hpp"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <openvino/core/parallel.hpp>
#include <openvino/op/constant.hpp>
#include <sstream>
#include <utility>
#include <vector>

#include "kernels/kernel.hpp"

namespace scap_ov {

namespace {

enum Port : size_t { X = 0, WEIGHTS, N_INPUTS = 7 };
using Param = SCAPFullyConnected::Param;
constexpr const char* kParamNames[SCAPFullyConnected::N_PARAMS] = {"scales", "zero_points", "mode", "threshold", "bias"};

bool weight_type_supported(const ov::element::Type& t) {
    using ov::element::Type_t;
    switch (t) {
    case Type_t::f32:
    case Type_t::f16:
    case Type_t::bf16:
    case Type_t::i8:
    case Type_t::u8:
    case Type_t::i4:
    case Type_t::u4:
        return true;
    default:
        return false;
    }
}

bool is_float_weight(const ov::element::Type& t) {
    return t == ov::element::f32 || t == ov::element::f16 || t == ov::element::bf16;
}
bool is_4bit(const ov::element::Type& t) {
    return t == ov::element::i4 || t == ov::element::u4;
}
bool is_asym(const ov::element::Type& t) {
    return t == ov::element::u8 || t == ov::element::u4;
}

// Constants read from an IR keep the byte offsets of the .bin file, which the serializer packs without padding:
// an f32 constant placed after an odd-sized 4-bit or u8 one is not 4-byte aligned, and reading it through a
// float* is undefined behaviour (found by UBSan, scripts/sanitize.sh). Such values are copied (they are small:
// mode, threshold, bias); aligned ones, the normal case, are used in place.
float f32_at(const void* p, size_t i) {
    float v;
    std::memcpy(&v, static_cast<const char*>(p) + i * sizeof(float), sizeof(float));
    return v;
}
const float* f32_aligned(const ov::Tensor& t, std::vector<float>& copy) {
    const void* p = t.data();
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(float) == 0)
        return static_cast<const float*>(p);
    copy.resize(t.get_size());
    if (!copy.empty())
        std::memcpy(copy.data(), p, copy.size() * sizeof(float));
    return copy.data();
}

kernels::WType to_wtype(const ov::element::Type& t) {
    using ov::element::Type_t;
    switch (t) {
    case Type_t::f32:
        return kernels::WType::f32;
    case Type_t::f16:
        return kernels::WType::f16;
    case Type_t::bf16:
        return kernels::WType::bf16;
    case Type_t::i8:
        return kernels::WType::i8;
    case Type_t::u8:
        return kernels::WType::u8;
    case Type_t::i4:
        return kernels::WType::i4;
    case Type_t::u4:
        return kernels::WType::u4;
    default:
        OPENVINO_THROW("SCAPFullyConnected: unsupported weight element type ", t);
    }
}

// A static empty 1-D shape [0] (the "absent" marker for scales, zero points and bias).
bool is_empty_marker(const ov::PartialShape& ps) {
    return ps.rank().is_static() && ps.rank().get_length() == 1 && ps[0].is_static() && ps[0].get_length() == 0;
}

// mode / threshold: scalar [], [1], or per-input-channel [IC].
bool vector_param_shape_ok(const ov::PartialShape& ps, const ov::Dimension& ic) {
    if (ps.rank().is_dynamic())
        return true;
    if (ps.rank().get_length() == 0)
        return true;
    if (ps.rank().get_length() != 1)
        return false;
    const auto& d = ps[0];
    if (d.is_dynamic())
        return true;
    if (d.get_length() == 1)
        return true;
    return ic.is_dynamic() || d.get_length() == ic.get_length();
}

// True when every value is finite and >= 0 (-0.0 included). Branch-free on the bit patterns so that it
// vectorizes: validate_and_infer_types() runs on every inference of a dynamic-shape model (the CPU plugin's
// shape-inference fallback clones the op), and a per-channel threshold has IC values.
// x's shape with the last dimension replaced by an output width.
ov::PartialShape output_shape(const ov::PartialShape& x_ps, const ov::Dimension& width) {
    if (x_ps.rank().is_dynamic())
        return ov::PartialShape::dynamic();
    ov::PartialShape out = x_ps;
    out[out.rank().get_length() - 1] = width;
    return out;
}

bool all_finite_non_negative(const void* p, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, static_cast<const char*>(p) + i * sizeof(u), sizeof(u));
        const uint32_t mag = u & 0x7FFFFFFFu;
        bad |= static_cast<uint32_t>(mag >= 0x7F800000u) | ((u >> 31) & static_cast<uint32_t>(mag != 0));
    }
    return bad == 0;
}


}  // namespace

SCAPFullyConnected::SCAPFullyConnected(const ov::OutputVector& args, int64_t schema_version)
    : Op(args),
      m_schema_version(schema_version) {
    constructor_validate_and_infer_types();
}

SCAPFullyConnected::SCAPFullyConnected(const ov::OutputVector& args,
                                       const std::string& inputs,
                                       float mode_value,
                                       float threshold_value,
                                       std::vector<int64_t> output_channels)
    : Op(args),
      m_schema_version(output_channels.empty() ? kCompactSchemaVersion : kMultiOutputSchemaVersion),
      m_inputs(inputs),
      m_mode_value(mode_value),
      m_threshold_value(threshold_value),
      m_output_channels(std::move(output_channels)) {
    constructor_validate_and_infer_types();
}

void SCAPFullyConnected::resolve_ports() {
    if (!is_compact()) {
        for (size_t p = 0; p < N_PARAMS; ++p)
            m_port[p] = static_cast<int64_t>(2 + p);
        return;
    }
    m_port.fill(-1);
    int64_t next = 2;
    size_t last = 0;  // names must follow the fixed order, each at most once
    size_t pos = 0;
    while (pos < m_inputs.size()) {
        size_t end = m_inputs.find(',', pos);
        if (end == std::string::npos)
            end = m_inputs.size();
        const std::string name = m_inputs.substr(pos, end - pos);
        size_t p = 0;
        while (p < N_PARAMS && name != kParamNames[p])
            ++p;
        NODE_VALIDATION_CHECK(this,
                              p < N_PARAMS,
                              "SCAPFullyConnected attribute inputs=\"",
                              m_inputs,
                              "\": unknown input name \"",
                              name,
                              "\" (expected a subset of scales,zero_points,mode,threshold,bias in this order)");
        NODE_VALIDATION_CHECK(this,
                              m_port[p] < 0 && p + 1 > last,
                              "SCAPFullyConnected attribute inputs=\"",
                              m_inputs,
                              "\": names must appear once each, in the order scales,zero_points,mode,threshold,bias");
        m_port[p] = next++;
        last = p + 1;
        pos = end + 1;
        NODE_VALIDATION_CHECK(this,
                              end == m_inputs.size() || pos < m_inputs.size(),
                              "SCAPFullyConnected attribute inputs=\"",
                              m_inputs,
                              "\" ends with a comma");
    }
}

namespace {
// The CPU plugin's ConvertPrecision pass would otherwise rewrite the packed constants before they reach
// evaluate(): f16/bf16 -> f32 and u4/i4 -> u8/i8, doubling the weight memory and bandwidth. Constants whose
// rt_info holds "keep_const_precision" (ov::KeepConstPrecision, the mark the plugin itself puts on compressed
// FC weights; only the key's presence is checked) keep their element type.
void keep_const_precision(ov::Node* node) {
    if (!ov::is_type<ov::op::v0::Constant>(node))
        return;
    // rt_info keys are DiscreteTypeInfo strings ("<name>_<version>"); build it the same way the library does.
    static const std::string key = std::string(ov::DiscreteTypeInfo("keep_const_precision", "0"));
    auto& rt = node->get_rt_info();
    if (rt.find(key) == rt.end())
        rt[key] = true;
}

// Empty when $SCAP_OV_DYNAMIC_QUANTIZATION_GROUP_SIZE is unset or a non-negative integer, else what is wrong.
std::string dynamic_quantization_setting_error() {
    if (kernels::dynamic_quantization_chunk() >= 0)
        return {};
    return std::string("SCAPFullyConnected: ") + kernels::kDynamicQuantizationEnv + "='" +
           std::getenv(kernels::kDynamicQuantizationEnv) +
           "' is not a non-negative integer (channels per activation chunk of the quantized prefill on int8/int4 "
           "weights; 0 = exact f32; unset = 32)";
}
}  // namespace

void SCAPFullyConnected::validate_and_infer_types() {
    // Checked when a model is built, read or compiled, where an error reaches the caller. Not in the copies the
    // plugin's shape-inference fallback validates at inference (x is a Constant there, see below): OpenVINO
    // 2026.4 turns an exception there into an empty output, and one from evaluate() into an untouched output
    // buffer, instead of an error.
    if (!ov::is_type<ov::op::v0::Constant>(get_input_node_ptr(X))) {
        const std::string dq_error = dynamic_quantization_setting_error();
        NODE_VALIDATION_CHECK(this, dq_error.empty(), dq_error);
    }
    NODE_VALIDATION_CHECK(this,
                          m_schema_version == kSchemaVersion || is_compact(),
                          "SCAPFullyConnected schema_version ",
                          m_schema_version,
                          " is not supported: this extension implements schema_version ",
                          kSchemaVersion,
                          ", ",
                          kCompactSchemaVersion,
                          " and ",
                          kMultiOutputSchemaVersion);
    resolve_ports();
    if (m_schema_version == kSchemaVersion) {
        NODE_VALIDATION_CHECK(this,
                              get_input_size() == N_INPUTS,
                              "SCAPFullyConnected expects 7 inputs (x, weights, scales, zero_points, mode, threshold, bias), got ",
                              get_input_size());
    } else {
        int64_t n = 2;
        for (size_t p = 0; p < N_PARAMS; ++p)
            n += m_port[p] >= 0;
        NODE_VALIDATION_CHECK(this,
                              static_cast<int64_t>(get_input_size()) == n,
                              "SCAPFullyConnected (compact, inputs=\"",
                              m_inputs,
                              "\") expects ",
                              n,
                              " inputs, got ",
                              get_input_size());
        NODE_VALIDATION_CHECK(this,
                              std::isfinite(m_threshold_value) && m_threshold_value >= 0.0f,
                              "SCAPFullyConnected threshold_value must be finite and >= 0, got ",
                              m_threshold_value);
    }
    // An absent parameter reads as its "none" marker: scales / zero points / bias empty [0], mode / threshold
    // a scalar f32 (the attribute value).
    const auto p_type = [&](Param p) {
        return m_port[p] >= 0 ? get_input_element_type(static_cast<size_t>(m_port[p])) : ov::element::f32;
    };
    static const ov::PartialShape scalar_marker{}, empty_marker{0};
    const auto p_shape = [&](Param p) -> const ov::PartialShape& {
        if (m_port[p] >= 0)
            return get_input_partial_shape(static_cast<size_t>(m_port[p]));
        return (p == Param::MODE || p == Param::THRESHOLD) ? scalar_marker : empty_marker;
    };

    const auto& x_t = get_input_element_type(X);
    const auto& w_t = get_input_element_type(WEIGHTS);
    const auto s_t = p_type(Param::SCALES);
    const auto z_t = m_port[Param::ZERO_POINTS] >= 0 ? p_type(Param::ZERO_POINTS) : w_t;
    const auto& x_ps = get_input_partial_shape(X);
    const auto& w_ps = get_input_partial_shape(WEIGHTS);
    const auto& s_ps = p_shape(Param::SCALES);
    const auto& z_ps = p_shape(Param::ZERO_POINTS);
    const auto& m_ps = p_shape(Param::MODE);
    const auto& t_ps = p_shape(Param::THRESHOLD);
    const auto& b_ps = p_shape(Param::BIAS);

    NODE_VALIDATION_CHECK(this, x_t.is_dynamic() || x_t == ov::element::f32, "SCAPFullyConnected input x must be f32, got ", x_t);
    NODE_VALIDATION_CHECK(this,
                          w_t.is_dynamic() || weight_type_supported(w_t),
                          "SCAPFullyConnected weights element type ",
                          w_t,
                          " is not supported (expected one of f32, f16, bf16, i8, u8, i4, u4)");
    NODE_VALIDATION_CHECK(this,
                          x_ps.rank().is_dynamic() || x_ps.rank().get_length() >= 1,
                          "SCAPFullyConnected input x must have rank >= 1, got shape ",
                          x_ps);
    NODE_VALIDATION_CHECK(this,
                          w_ps.rank().is_dynamic() || w_ps.rank().get_length() == 2,
                          "SCAPFullyConnected weights must be 2-D [IC, OC], got shape ",
                          w_ps);

    ov::Dimension ic = ov::Dimension::dynamic(), oc = ov::Dimension::dynamic();
    if (w_ps.rank().is_static()) {
        ic = w_ps[0];
        oc = w_ps[1];
    }
    if (x_ps.rank().is_static()) {
        const auto& x_ic = x_ps[x_ps.rank().get_length() - 1];
        NODE_VALIDATION_CHECK(this,
                              x_ic.compatible(ic),
                              "SCAPFullyConnected input channels mismatch: x has IC=",
                              x_ic,
                              " (shape ",
                              x_ps,
                              ") but weights [IC, OC] have IC=",
                              ic);
        if (ic.is_dynamic())
            ic = x_ic;
    }
    if (w_t.is_static() && is_4bit(w_t) && oc.is_static()) {
        NODE_VALIDATION_CHECK(this,
                              oc.get_length() % 2 == 0,
                              "SCAPFullyConnected 4-bit weights (",
                              w_t,
                              ") need an even number of output channels, got OC=",
                              oc);
    }

    // scales / zero points
    NODE_VALIDATION_CHECK(this,
                          s_t.is_dynamic() || s_t == ov::element::f16 || s_t == ov::element::f32,
                          "SCAPFullyConnected scales must be f16 or f32, got ",
                          s_t);
    if (w_t.is_static() && is_float_weight(w_t)) {
        NODE_VALIDATION_CHECK(this,
                              s_ps.rank().is_dynamic() || is_empty_marker(s_ps),
                              "SCAPFullyConnected scales must be empty (shape [0]) for float weights (",
                              w_t,
                              "), got shape ",
                              s_ps);
        NODE_VALIDATION_CHECK(this,
                              z_ps.rank().is_dynamic() || is_empty_marker(z_ps),
                              "SCAPFullyConnected zero_points must be empty (shape [0]) for float weights, got shape ",
                              z_ps);
    } else if (w_t.is_static()) {
        NODE_VALIDATION_CHECK(this,
                              s_ps.rank().is_dynamic() || s_ps.rank().get_length() == 2,
                              "SCAPFullyConnected scales must be 2-D [G, OC] for ",
                              w_t,
                              " weights, got shape ",
                              s_ps);
        if (s_ps.rank().is_static()) {
            NODE_VALIDATION_CHECK(this,
                                  s_ps[1].compatible(oc),
                                  "SCAPFullyConnected scales [G, OC] have OC=",
                                  s_ps[1],
                                  " but weights have OC=",
                                  oc);
            const auto& g = s_ps[0];
            NODE_VALIDATION_CHECK(this,
                                  g.is_dynamic() || g.get_length() >= 1,
                                  "SCAPFullyConnected scales need at least one group, got shape ",
                                  s_ps);
            if (g.is_static() && ic.is_static()) {
                NODE_VALIDATION_CHECK(this,
                                      ic.get_length() % g.get_length() == 0,
                                      "SCAPFullyConnected group size does not divide IC: ",
                                      g.get_length(),
                                      " groups along IC=",
                                      ic.get_length());
            }
        }
        if (is_asym(w_t)) {
            NODE_VALIDATION_CHECK(this,
                                  z_t.is_dynamic() || z_t == w_t,
                                  "SCAPFullyConnected zero_points must have the weight type ",
                                  w_t,
                                  ", got ",
                                  z_t);
            NODE_VALIDATION_CHECK(this,
                                  z_ps.compatible(s_ps),
                                  "SCAPFullyConnected zero_points shape ",
                                  z_ps,
                                  " must equal the scales shape ",
                                  s_ps);
            NODE_VALIDATION_CHECK(this,
                                  z_ps.rank().is_dynamic() || z_ps.rank().get_length() == 2,
                                  "SCAPFullyConnected zero_points must be 2-D [G, OC], got shape ",
                                  z_ps);
            if (is_4bit(w_t) && z_ps.rank().is_static() && z_ps[1].is_static()) {
                NODE_VALIDATION_CHECK(this,
                                      z_ps[1].get_length() % 2 == 0,
                                      "SCAPFullyConnected u4 zero_points need an even OC, got shape ",
                                      z_ps);
            }
        } else {
            NODE_VALIDATION_CHECK(this,
                                  z_ps.rank().is_dynamic() || is_empty_marker(z_ps),
                                  "SCAPFullyConnected zero_points must be empty (shape [0]) for symmetric ",
                                  w_t,
                                  " weights, got shape ",
                                  z_ps);
        }
    }

    // mode / threshold
    const auto m_t = p_type(Param::MODE);
    const auto t_t = p_type(Param::THRESHOLD);
    NODE_VALIDATION_CHECK(this, m_t.is_dynamic() || m_t == ov::element::f32, "SCAPFullyConnected mode must be f32, got ", m_t);
    NODE_VALIDATION_CHECK(this,
                          t_t.is_dynamic() || t_t == ov::element::f32,
                          "SCAPFullyConnected threshold must be f32, got ",
                          t_t);
    NODE_VALIDATION_CHECK(this,
                          vector_param_shape_ok(m_ps, ic),
                          "SCAPFullyConnected mode must be a scalar ([] or [1]) or a per-input-channel vector [IC=",
                          ic,
                          "], got shape ",
                          m_ps);
    NODE_VALIDATION_CHECK(this,
                          vector_param_shape_ok(t_ps, ic),
                          "SCAPFullyConnected threshold must be a scalar ([] or [1]) or a per-input-channel vector [IC=",
                          ic,
                          "], got shape ",
                          t_ps);
    const auto* thr_node = m_port[Param::THRESHOLD] >= 0 ? get_input_node_ptr(static_cast<size_t>(m_port[Param::THRESHOLD])) : nullptr;
    if (const auto* c = ov::as_type<const ov::op::v0::Constant>(thr_node)) {
        if (c->get_element_type() == ov::element::f32) {
            const void* p = c->get_data_ptr();  // possibly misaligned (IR constant): see f32_at
            const size_t n = ov::shape_size(c->get_shape());
            if (!all_finite_non_negative(p, n)) {
                for (size_t i = 0; i < n; ++i) {
                    const float v = f32_at(p, i);
                    NODE_VALIDATION_CHECK(this,
                                          std::isfinite(v) && v >= 0.0f,
                                          "SCAPFullyConnected threshold must be finite and >= 0, got ",
                                          v,
                                          " at index ",
                                          i);
                }
            }
        }
    }

    // bias
    const auto b_t = p_type(Param::BIAS);
    NODE_VALIDATION_CHECK(this, b_t.is_dynamic() || b_t == ov::element::f32, "SCAPFullyConnected bias must be f32, got ", b_t);
    NODE_VALIDATION_CHECK(this,
                          b_ps.rank().is_dynamic() || (b_ps.rank().get_length() == 1 &&
                                                       (is_empty_marker(b_ps) || b_ps[0].compatible(oc))),
                          "SCAPFullyConnected bias must be [OC=",
                          oc,
                          "] or empty [0], got shape ",
                          b_ps);

    // Skipped when x is a Constant: that is the throw-away copy the CPU plugin's shape-inference fallback
    // (ShapeInferFallback) makes on every inference of a dynamic-shape model, with every input, x included,
    // wrapped in a fresh Constant; marking those would only cost allocations. (A real op on a constant x is
    // constant-folded by the plugin, so the precision of its weights does not matter there.)
    if (!ov::is_type<ov::op::v0::Constant>(get_input_node_ptr(X))) {
        keep_const_precision(get_input_node_ptr(WEIGHTS));
        for (Param p : {Param::SCALES, Param::ZERO_POINTS})
            if (m_port[p] >= 0)
                keep_const_precision(get_input_node_ptr(static_cast<size_t>(m_port[p])));
    }

    if (m_schema_version != kMultiOutputSchemaVersion) {
        set_output_type(0, ov::element::f32, output_shape(x_ps, oc));
        return;
    }
    NODE_VALIDATION_CHECK(this, !m_output_channels.empty(), "SCAPFullyConnected schema_version 3 needs output_channels");
    int64_t total = 0;
    for (const int64_t width : m_output_channels) {
        NODE_VALIDATION_CHECK(this, width >= 1, "SCAPFullyConnected output_channels must be >= 1 each, got ", width);
        total += width;
    }
    NODE_VALIDATION_CHECK(this,
                          oc.is_dynamic() || total == oc.get_length(),
                          "SCAPFullyConnected output_channels add up to ",
                          total,
                          " but the weights have OC=",
                          oc);
    for (size_t i = 0; i < m_output_channels.size(); ++i)
        set_output_type(i, ov::element::f32, output_shape(x_ps, m_output_channels[i]));
}

std::shared_ptr<ov::Node> SCAPFullyConnected::clone_with_new_inputs(const ov::OutputVector& new_args) const {
    // (ov::check_new_args_count builds input_values(), i.e. 7 shared_ptr copies, on every call.)
    NODE_VALIDATION_CHECK(this,
                          new_args.size() == get_input_size(),
                          "clone_with_new_inputs() expected ",
                          get_input_size(),
                          " arguments, but got ",
                          new_args.size());
    if (is_compact())
        return std::make_shared<SCAPFullyConnected>(new_args, m_inputs, m_mode_value, m_threshold_value,
                                                    m_output_channels);
    return std::make_shared<SCAPFullyConnected>(new_args, m_schema_version);
}

bool SCAPFullyConnected::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("schema_version", m_schema_version);
    // Written only for the compact form, so schema_version 1 IRs stay exactly as before.
    if (is_compact()) {
        visitor.on_attribute("inputs", m_inputs);
        visitor.on_attribute("mode_value", m_mode_value);
        visitor.on_attribute("threshold_value", m_threshold_value);
    }
    if (m_schema_version == kMultiOutputSchemaVersion)
        visitor.on_attribute("output_channels", m_output_channels);
    return true;
}

bool SCAPFullyConnected::has_evaluate() const {
    return true;
}

const uint8_t* SCAPFullyConnected::placed_weights(const void* src, size_t bytes) const {
    const Placement* p = m_placement.load(std::memory_order_acquire);
    if (p && p->src == src)
        return p->placed.data;
    std::lock_guard<std::mutex> lock(m_placement_mutex);
    p = m_placement.load(std::memory_order_relaxed);
    if (!p || p->src != src) {
        m_placements.push_back(std::make_unique<Placement>(Placement{src, place_weights(src, bytes)}));
        p = m_placements.back().get();
        if (kernels::debug_enabled())
            std::fprintf(stderr, "[scap_ov] %s: weights %zu bytes %s\n", get_friendly_name().c_str(), bytes,
                         p->placed.how);
        m_placement.store(p, std::memory_order_release);
    }
    return p->placed.data;
}

bool SCAPFullyConnected::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    size_t n_inputs = 2;
    for (size_t p = 0; p < N_PARAMS; ++p)
        n_inputs += m_port[p] >= 0;
    OPENVINO_ASSERT(inputs.size() == n_inputs, "SCAPFullyConnected::evaluate expects ", n_inputs, " inputs, got ",
                    inputs.size());
    const size_t n_outputs = m_output_channels.empty() ? 1 : m_output_channels.size();
    OPENVINO_ASSERT(outputs.size() == n_outputs, "SCAPFullyConnected::evaluate expects ", n_outputs, " outputs, got ",
                    outputs.size());
    const auto& x = inputs[X];
    const auto& w = inputs[WEIGHTS];
    // Absent parameters (compact form): nullptr.
    const auto param = [&](Param p) -> const ov::Tensor* {
        return m_port[p] >= 0 ? &inputs[static_cast<size_t>(m_port[p])] : nullptr;
    };
    const ov::Tensor* s = param(Param::SCALES);
    const ov::Tensor* z = param(Param::ZERO_POINTS);
    const ov::Tensor* m = param(Param::MODE);
    const ov::Tensor* t = param(Param::THRESHOLD);
    const ov::Tensor* b = param(Param::BIAS);

    const auto w_t = w.get_element_type();
    OPENVINO_ASSERT(x.get_element_type() == ov::element::f32, "SCAPFullyConnected: x must be f32");
    OPENVINO_ASSERT(weight_type_supported(w_t), "SCAPFullyConnected: unsupported weight type ", w_t);
    const auto& xs = x.get_shape();
    const auto& ws = w.get_shape();
    OPENVINO_ASSERT(xs.size() >= 1, "SCAPFullyConnected: x must have rank >= 1");
    OPENVINO_ASSERT(ws.size() == 2, "SCAPFullyConnected: weights must be 2-D, got ", ws);
    const int64_t IC = static_cast<int64_t>(ws[0]);
    const int64_t OC = static_cast<int64_t>(ws[1]);
    OPENVINO_ASSERT(static_cast<int64_t>(xs.back()) == IC,
                    "SCAPFullyConnected: x has IC=", xs.back(), " but weights have IC=", IC);
    OPENVINO_ASSERT(IC >= 1, "SCAPFullyConnected: IC must be >= 1");
    const bool q4 = is_4bit(w_t);
    OPENVINO_ASSERT(!q4 || OC % 2 == 0, "SCAPFullyConnected: 4-bit weights need an even OC, got ", OC);
    const size_t w_bytes = q4 ? static_cast<size_t>(IC * OC / 2) : static_cast<size_t>(IC * OC) * w_t.size();
    OPENVINO_ASSERT(w.get_byte_size() >= w_bytes, "SCAPFullyConnected: weights tensor is smaller than [IC, OC]");

    int64_t G = 1;
    if (!is_float_weight(w_t)) {
        OPENVINO_ASSERT(s, "SCAPFullyConnected: ", w_t, " weights need scales");
        const auto& ss = s->get_shape();
        OPENVINO_ASSERT(s->get_element_type() == ov::element::f16 || s->get_element_type() == ov::element::f32,
                        "SCAPFullyConnected: scales must be f16 or f32");
        OPENVINO_ASSERT(ss.size() == 2 && static_cast<int64_t>(ss[1]) == OC && ss[0] >= 1,
                        "SCAPFullyConnected: scales must be [G, OC=", OC, "], got ", ss);
        G = static_cast<int64_t>(ss[0]);
        OPENVINO_ASSERT(IC % G == 0, "SCAPFullyConnected: ", G, " groups do not divide IC=", IC);
        if (is_asym(w_t)) {
            OPENVINO_ASSERT(z && z->get_element_type() == w_t && z->get_shape() == ss,
                            "SCAPFullyConnected: zero_points must be ", w_t, " ", ss);
            const size_t zb = q4 ? static_cast<size_t>(G * OC / 2) : static_cast<size_t>(G * OC);
            OPENVINO_ASSERT(z->get_byte_size() >= zb, "SCAPFullyConnected: zero_points tensor too small");
        }
    }
    const size_t n_mode = m ? m->get_size() : 1;
    const size_t n_thr = t ? t->get_size() : 1;
    OPENVINO_ASSERT((!m || m->get_element_type() == ov::element::f32) && (n_mode == 1 || static_cast<int64_t>(n_mode) == IC),
                    "SCAPFullyConnected: mode must be f32 with 1 or IC=", IC, " values, got ", n_mode);
    OPENVINO_ASSERT((!t || t->get_element_type() == ov::element::f32) && (n_thr == 1 || static_cast<int64_t>(n_thr) == IC),
                    "SCAPFullyConnected: threshold must be f32 with 1 or IC=", IC, " values, got ", n_thr);
    const size_t n_bias = b ? b->get_size() : 0;
    OPENVINO_ASSERT((!b || b->get_element_type() == ov::element::f32) && (n_bias == 0 || static_cast<int64_t>(n_bias) == OC),
                    "SCAPFullyConnected: bias must be f32 [OC=", OC, "] or [0], got ", n_bias, " values");

    const int64_t M = static_cast<int64_t>(ov::shape_size(xs) / static_cast<size_t>(IC));
    int64_t columns = 0;
    for (size_t i = 0; i < n_outputs; ++i) {
        const int64_t width = m_output_channels.empty() ? OC : m_output_channels[i];
        ov::Shape out_shape = xs;
        out_shape.back() = static_cast<size_t>(width);
        outputs[i].set_shape(out_shape);
        OPENVINO_ASSERT(outputs[i].get_element_type() == ov::element::f32, "SCAPFullyConnected: outputs must be f32");
        columns += width;
    }
    OPENVINO_ASSERT(columns == OC, "SCAPFullyConnected: output_channels add up to ", columns, " but OC=", OC);

    kernels::FcArgs a;
    a.x = x.data<const float>();
    a.M = M;
    a.IC = IC;
    a.OC = OC;
    a.wtype = to_wtype(w_t);
    a.w = placed_weights(w.data(), w_bytes);
    if (!is_float_weight(w_t)) {
        a.scales = s->data();
        a.scales_f16 = s->get_element_type() == ov::element::f16;
        a.n_groups = G;
        a.group_size = IC / G;
        if (is_asym(w_t))
            a.zp = static_cast<const uint8_t*>(z->data());
    } else {
        a.n_groups = 1;
        a.group_size = IC;
    }
    std::vector<float> mode_copy, thr_copy, bias_copy;  // only filled for misaligned constants (f32_aligned)
    a.mode = m ? f32_aligned(*m, mode_copy) : &m_mode_value;
    a.mode_vec = n_mode != 1;
    a.thr = t ? f32_aligned(*t, thr_copy) : &m_threshold_value;
    a.thr_vec = n_thr != 1;
    a.bias = n_bias ? f32_aligned(*b, bias_copy) : nullptr;
    // Malformed after compilation (validation refuses it before): exact f32, said once, since an exception
    // from here would not reach the caller (see validate_and_infer_types).
    a.dq_chunk = kernels::dynamic_quantization_chunk();
    if (a.dq_chunk < 0) {
        static std::atomic<bool> warned{false};
        if (!warned.exchange(true))
            std::fprintf(stderr, "[scap_ov] %s; prefill and decode stay exact f32\n", dynamic_quantization_setting_error().c_str());
        a.dq_chunk = 0;
    }
    if (M == 0 || OC == 0)
        return true;
    if (n_outputs == 1) {
        a.y = outputs[0].data<float>();
        kernels::run(a, kernels::active_isa(), parallel_get_max_threads());
        return true;
    }
    // Several outputs: the kernel writes [M, OC] rows, each output takes its column range of every row. The
    // row buffer is kept by the calling thread up to 1 MiB (decode); larger ones (prefill) live for the call.
    constexpr size_t kKeptRowFloats = (size_t{1} << 20) / sizeof(float);
    thread_local std::vector<float> kept_rows;
    std::vector<float> call_rows;
    const size_t n_rows = static_cast<size_t>(M * OC);
    std::vector<float>& rows = n_rows <= kKeptRowFloats ? kept_rows : call_rows;
    if (rows.size() < n_rows)
        rows.resize(n_rows);
    a.y = rows.data();
    kernels::run(a, kernels::active_isa(), parallel_get_max_threads());
    int64_t first = 0;
    for (size_t i = 0; i < n_outputs; ++i) {
        const int64_t width = m_output_channels[i];
        float* out = outputs[i].data<float>();
        for (int64_t row = 0; row < M; ++row)
            std::memcpy(out + row * width, rows.data() + row * OC + first, static_cast<size_t>(width) * sizeof(float));
        first += width;
    }
    return true;
}

}  // namespace scap_ov
