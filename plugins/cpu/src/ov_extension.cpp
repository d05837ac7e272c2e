// Entry point of the SCAP CPU extension library (loaded by ov::Core::add_extension).
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/extension.hpp>

#include "scap_fully_connected.hpp"

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>(
    {std::make_shared<ov::OpExtension<scap_ov::SCAPFullyConnected>>(),
     std::make_shared<ov::frontend::OpExtension<scap_ov::SCAPFullyConnected>>()}));
