// SCAPFullyConnected: an activation-sparse fully-connected layer (SCAP, arXiv 2412.07174).
//
//   d = x - mode;  keep_j = |d_j| > threshold_j;  y_o = sum_{j kept} d_j * Wdeq[j, o] + bias_o
//
// Inputs (fixed order): x f32 [..., IC]; weights [IC, OC] (f32, f16, bf16, i8, u8, i4, u4);
// scales f16/f32 [G, OC] ([0] for float weights); zero_points [G, OC] of the weight type for u8/u4 ([0]
// otherwise); mode f32 [] / [1] / [IC]; threshold f32 [] / [1] / [IC]; bias f32 [OC] or [0].
// Output: f32 [..., OC].
//
// schema_version 2 (compact): the same op with only the inputs that carry data. x and weights are always
// inputs 0 and 1; attribute `inputs` lists, in the fixed order above, which of scales, zero_points, mode,
// threshold, bias follow (e.g. "threshold" or "scales,zero_points"). An absent mode / threshold takes the
// scalar attribute `mode_value` / `threshold_value`; absent scales / zero points / bias mean none.
// Why: with a dynamic token dimension the CPU plugin re-infers the shape of an extension op on every call by
// wrapping every input in a Constant and cloning the op (ShapeInferFallback, all ports data-dependent), and
// builds an ov::Tensor per input for evaluate(); each input costs a few microseconds per call, so the 7-input
// form of an f32 FC paid for 5 inputs that hold nothing or a single scalar.
//
// schema_version 3 (compact, several outputs): the compact form plus attribute `output_channels`, the widths of
// consecutive output column ranges, one output each (they add up to OC). FCs that share their input, mode and
// threshold (q/k/v, gate/up) are one op over their concatenated columns; with one output per FC the CPU plugin
// runs no VariadicSplit node after it (6-11 us per call on SmolLM2, more than the copy it replaces).
#pragma once

#include <array>
#include <atomic>
#include <mutex>
#include <vector>
#include <string>

#include <openvino/op/op.hpp>

#include "huge_pages.hpp"

namespace scap_ov {

class SCAPFullyConnected : public ov::op::Op {
public:
    OPENVINO_OP("SCAPFullyConnected", "extension");

    static constexpr int64_t kSchemaVersion = 1;         // seven inputs
    static constexpr int64_t kCompactSchemaVersion = 2;  // x, weights + the inputs named by `inputs`
    static constexpr int64_t kMultiOutputSchemaVersion = 3;  // compact + one output per `output_channels` range

    // Logical parameters after x and weights, in their fixed order.
    enum Param : size_t { SCALES = 0, ZERO_POINTS, MODE, THRESHOLD, BIAS, N_PARAMS };

    SCAPFullyConnected() = default;
    SCAPFullyConnected(const ov::OutputVector& args, int64_t schema_version = kSchemaVersion);
    // Compact form (schema_version 2), or 3 when `output_channels` is not empty.
    SCAPFullyConnected(const ov::OutputVector& args,
                       const std::string& inputs,
                       float mode_value,
                       float threshold_value,
                       std::vector<int64_t> output_channels = {});

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
    bool has_evaluate() const override;

    int64_t get_schema_version() const {
        return m_schema_version;
    }

    // Input port of a parameter, or -1 when it is absent (compact form).
    int64_t port_of(Param p) const {
        return m_port[p];
    }

private:
    bool is_compact() const {
        return m_schema_version == kCompactSchemaVersion || m_schema_version == kMultiOutputSchemaVersion;
    }
    // Parses m_inputs into m_port (throws on an unknown / repeated / out-of-order name).
    void resolve_ports();
    // The buffer the kernel reads the weights at `src` from: placed on huge pages on first use (huge_pages.hpp).
    const uint8_t* placed_weights(const void* src, size_t bytes) const;

    int64_t m_schema_version = kSchemaVersion;
    std::string m_inputs;          // compact form only
    float m_mode_value = 0.0f;     // compact form: value of an absent mode
    float m_threshold_value = 0.0f;  // compact form: value of an absent threshold
    std::vector<int64_t> m_output_channels;  // schema_version 3: width of each output (sum = OC)
    std::array<int64_t, N_PARAMS> m_port{{2, 3, 4, 5, 6}};
    // Placement of the weights constant (its address does not change between calls). The mutex serialises the
    // first calls of concurrent infer requests; later calls read one atomic. Placements are kept for the op's
    // life, so a reader holding an earlier one stays valid even if the source ever changed.
    struct Placement {
        const void* src = nullptr;
        PlacedWeights placed;
    };
    mutable std::mutex m_placement_mutex;
    mutable std::atomic<const Placement*> m_placement{nullptr};
    mutable std::vector<std::unique_ptr<Placement>> m_placements;
};

}  // namespace scap_ov
