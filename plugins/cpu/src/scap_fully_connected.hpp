// SCAPFullyConnected: an activation-sparse fully-connected layer (SCAP, arXiv 2412.07174).
//
//   d = x - mode;  keep_j = |d_j| > threshold_j;  y_o = sum_{j kept} d_j * Wdeq[j, o] + bias_o
//
// Inputs (fixed order): x f32 [..., IC]; weights [IC, OC] (f32, f16, bf16, i8, u8, i4, u4);
// scales f16/f32 [G, OC] ([0] for float weights); zero_points [G, OC] of the weight type for u8/u4 ([0]
// otherwise); mode f32 [] / [1] / [IC]; threshold f32 [] / [1] / [IC]; bias f32 [OC] or [0].
// Output: f32 [..., OC].
#pragma once

#include <openvino/op/op.hpp>

namespace scap_ov {

class SCAPFullyConnected : public ov::op::Op {
public:
    OPENVINO_OP("SCAPFullyConnected", "extension");

    static constexpr int64_t kSchemaVersion = 1;

    SCAPFullyConnected() = default;
    SCAPFullyConnected(const ov::OutputVector& args, int64_t schema_version = kSchemaVersion);

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
    bool has_evaluate() const override;

    int64_t get_schema_version() const {
        return m_schema_version;
    }

private:
    int64_t m_schema_version = kSchemaVersion;
};

}  // namespace scap_ov
